"""Figures from run folders: reliability diagrams (:mod:`~peerkd.plots.reliability`) and diversity curves
(:mod:`~peerkd.plots.diversity`); matplotlib is the optional extra ``peerkd[plot]``."""
