"""Tiny spawner for timed_process (bench/_benchlib.py): fork/exec CMD, wait4, write JSON to OUT.

    python -I -S bench/_spawn.py OUT CMD...

Why a separate small process: on Linux a child's ru_maxrss starts from its parent's RSS at
fork (exec keeps the old mm's high-water mark), so spawning from the big benchmark process
would put a floor of ~30+ MB under every measurement. This helper has a few MB of RSS.
Nothing is imported before the child exits, so the helper stays small.
"""

import os
import sys
import time

out_path, cmd = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execv(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
import json  # noqa: E402  (only after the child is gone)

with open(out_path, "w") as f:
    json.dump(
        {
            "wall_s": wall,
            "maxrss_kb": ru.ru_maxrss,
            "user_s": ru.ru_utime,
            "sys_s": ru.ru_stime,
            "returncode": os.waitstatus_to_exitcode(status),
        },
        f,
    )
