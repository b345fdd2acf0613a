"""Run `mlcm app --port PORT` for the browser tests and make sure it dies with them.

`mlcm app` execs `panel serve` (same pid), and the server runs in its own process group and this wrapper
terminates the whole group when it is asked to (SIGTERM/SIGINT) or when the test process that started it
disappears (a pytest killed by a timeout runs no fixture teardown).

    python tests/browser/_serve.py PORT
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def main() -> int:
    port = sys.argv[1]
    parent = os.getppid()
    proc = subprocess.Popen([sys.executable, "-m", "mlcm_core.cli", "app", "--port", port], start_new_session=True)

    def stop(*_):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while proc.poll() is None:
        if os.getppid() != parent:  # the tests are gone
            stop()
        time.sleep(1)
    return proc.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
