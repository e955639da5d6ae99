"""Suite-wide setup: one torch thread, and the shared S3 protocol server fixtures.

Two cores run many small models here; a second thread per process only adds contention
(training a small model is ~8x slower with 2 threads on a busy 2-core machine). Stage
processes started by tests inherit the same limit through the environment.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # (after the thread limit, so OpenMP reads it)

torch.set_num_threads(1)

pytest_plugins = ["tests.support.s3"]
