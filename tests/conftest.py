"""Settings every test shares. Service fixtures live beside their tests (tests/<service>/)."""

import os

# Single-row model work on small shared machines: one thread, or kernels fight for cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
