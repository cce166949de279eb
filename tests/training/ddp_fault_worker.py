"""``peerkd`` under torchrun with one worker killed: in the first attempt (TORCHELASTIC_RESTART_COUNT 0), the rank
named by PEERKD_TEST_KILL_RANK ends itself with ``os._exit`` (as kill -9 would: nothing saved, no clean-up) when it
reaches global step PEERKD_TEST_KILL_STEP. Used by tests/training/test_ddp_fault.py; not a test module."""
import faulthandler
import os
import signal
import sys

from peerkd.training import trainer
from peerkd.cli import main

faulthandler.register(signal.SIGUSR1)  # a hung worker's stacks: kill -USR1 <pid>

if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0" and \
        os.environ.get("RANK") == os.environ.get("PEERKD_TEST_KILL_RANK"):
    kill_step = int(os.environ["PEERKD_TEST_KILL_STEP"])
    build = trainer.Trainer.__init__

    def killed_at_step(self, *args, **kwargs):
        build(self, *args, **kwargs)

        def kill(t):
            if t.global_step == kill_step:
                os._exit(9)

        self.on_step = kill

    trainer.Trainer.__init__ = killed_at_step

sys.exit(main(sys.argv[1:]))
