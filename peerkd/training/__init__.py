"""Training: the one loop for every method (:mod:`~peerkd.training.trainer`), its step
(:mod:`~peerkd.training.step`), the choice of how members execute (:mod:`~peerkd.training.execution`), the process
set-up (:mod:`~peerkd.training.setup`), checkpoints and loading a finished run (:mod:`~peerkd.training.checkpoint`),
the run folder (:mod:`~peerkd.training.run_folder`, locked with :mod:`peerkd.core.run_lock`)."""
