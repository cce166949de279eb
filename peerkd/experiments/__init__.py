"""Around the trainer: many runs and what they show. :mod:`~peerkd.experiments.plan` (config x seed -> run folders),
:mod:`~peerkd.experiments.sweep` (the local executor and ``peerkd sweep``), :mod:`~peerkd.experiments.slurm`
(submitit), :mod:`~peerkd.experiments.aggregate` and :mod:`~peerkd.experiments.render` (``peerkd report``). Nothing
here imports a method or the trainer: experiments launch ordinary ``peerkd train`` processes and read run folders."""
