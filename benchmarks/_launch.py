"""Run a command and report its peak RSS: `python -m benchmarks._launch <command...>`.

Linux carries a process's peak RSS across fork and exec, so a child of the (large) benchmark
process would start with the parent's peak. This launcher imports nothing heavy; the command
it forks starts small, and `RUSAGE_CHILDREN` then holds that command's own peak alone.
Prints the command's stdout, then one line `{"peak_rss_bytes": N}`; exits with its status.
"""

import json
import resource
import subprocess
import sys


def main() -> int:
    done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE)
    sys.stdout.buffer.write(done.stdout)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux reports KiB
    print(json.dumps({"peak_rss_bytes": peak_kib * 1024}), flush=True)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
