"""The core every other layer builds on: the method contract (:mod:`peerkd.core.method`), the registries of methods,
models and datasets (:mod:`peerkd.core.registry`), user code loaded by name (:mod:`peerkd.core.plugins`), the error
types (:mod:`peerkd.core.errors`) and the exit codes (:mod:`peerkd.core.process`). It imports nothing else of
peerkd at import time."""
