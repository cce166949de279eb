"""Training: the one loop for every method (:mod:`~peerkd.train.trainer`), its step (:mod:`~peerkd.train.step`), the
choice of how members execute (:mod:`~peerkd.train.execution`), the process set-up (:mod:`~peerkd.train.setup`),
checkpoints and loading a finished run (:mod:`~peerkd.train.checkpoint`), the run folder and its lock
(:mod:`~peerkd.train.run_folder`, :mod:`~peerkd.train.lock`)."""
