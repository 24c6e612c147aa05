"""Run a command and report its start-up time and peak RSS as one JSON line.

A separate small process is needed: Linux carries a process's peak RSS across
exec, so a child forked straight from a large benchmark process (torch loaded)
would report the parent's memory as its own.
"""

import json
import os
import subprocess
import sys
import time


def main() -> None:
    command = sys.argv[1:]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    first = proc.stdout.readline()
    elapsed = time.perf_counter() - start
    proc.stdout.read()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    print(json.dumps({"seconds": elapsed, "peak_rss_kib": usage.ru_maxrss, "exit": proc.returncode, "printed": bool(first)}))


if __name__ == "__main__":
    main()
