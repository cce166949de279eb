import os

import torch

# two threads keep one test's runs fast on the 2-core CI machine without oversubscribing it
torch.set_num_threads(int(os.environ.get("PEERKD_TEST_THREADS", "2")))
