"""Shared test settings: keep torch to one thread so parallel work on 2 cores stays predictable."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
