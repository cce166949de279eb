"""Deployment: a trained run's networks as files a deployer loads without peerkd (:mod:`~peerkd.deploy.export`)."""
