"""The MD5 worker's main loop: read a task frame from stdin, answer with the digest words.

A task names a shared-memory template and the columns to hash (see ``md5_workers``).
"""

from __future__ import annotations

import pickle
import sys
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from membership_pipeline.evaluation.md5_kernel import hash_template
from membership_pipeline.evaluation.md5_workers import _read_frame, _write_frame


def main() -> None:
    tasks, answers = sys.stdin.buffer, sys.stdout.buffer
    opened: dict[str, SharedMemory] = {}  # the two most recent templates
    while True:
        try:
            frame = _read_frame(tasks)
        except EOFError:
            return
        name, shape, prefix, columns, count = pickle.loads(frame)
        shm = opened.pop(name, None)
        if shm is None:
            shm = SharedMemory(name=name)
            # The calling process owns the segment: this process must not unlink it at exit.
            resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
        opened[name] = shm
        while len(opened) > 2:
            opened.pop(next(iter(opened))).close()
        out = np.empty((count, 4), dtype=np.uint32)
        hash_template(np.ndarray(shape, dtype=np.uint32, buffer=shm.buf), prefix, columns, out)
        _write_frame(answers, out.tobytes())


if __name__ == "__main__":
    main()
