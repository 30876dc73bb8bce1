"""Importing this module loads every compiled kernel into the process (from numba's on-disk
cache, or compiled on a machine that has none yet).

The multiprocess executor's forkserver preloads it, so every step it forks starts with the
kernels in memory; otherwise each shard step loads them again on its first call (about 0.3 s a
step, on the backfill's critical path).
"""

from membership_pipeline.evaluation.kernels import warm

warm()
