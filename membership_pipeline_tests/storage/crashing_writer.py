"""A backfill writer that stops between its shadow write and the flip, to be killed there.

python -m membership_pipeline_tests.storage.crashing_writer STORE_URL ENVIRONMENT
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta

from pyroaring import BitMap

from membership_pipeline.storage import Claim, MembershipStore


def main() -> None:
    url, environment_key = sys.argv[1:3]
    store = MembershipStore(url, cooldown=timedelta(0), chunk_bytes=256)
    held = store.claim(environment_key, f"pid:{os.getpid()}")
    assert isinstance(held, Claim), held
    shadow = store.stage(held, as_of=store.clock())
    shadow.add_universe(BitMap(range(50_000)))
    shadow.add_segment("s", "S", BitMap(range(0, 50_000, 3)))
    shadow.seal(now=store.clock())
    print(f"SHADOW_WRITTEN {shadow.version_id}", flush=True)
    time.sleep(120)  # the test kills the process here, before the flip
    store.publish(held, shadow)


if __name__ == "__main__":
    main()
