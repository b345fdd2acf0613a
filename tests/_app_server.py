"""Run `mlcm app` for the tests that talk to a real server, and make sure it dies with them.

One home for starting, waiting for and stopping a dashboard process (the browser tests, the two-server test).
`serving(...)` starts this file as a small wrapper process: the wrapper runs `mlcm app --port PORT` (which
execs `panel serve`, same pid) in its own process group and terminates the whole group when it is asked to
(SIGTERM/SIGINT) or when the test process that started it disappears (a pytest killed by a timeout runs no
fixture teardown).

    python tests/_app_server.py PORT
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(env: dict[str, str], log_path: Path, timeout: float = 180.0) -> Iterator[str]:
    """Start `mlcm app` on a free port with ``env``, wait until /main answers (its first session also warms
    the server up) and yield that URL; the server's process group is stopped on exit. The server's output goes
    to ``log_path`` (a file, not a pipe: an undrained pipe blocks the server once full)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/main"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(Path(__file__)), str(port)], cwd=ROOT,
                                env={**env, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"mlcm app exited early:\n{log_path.read_text()[-5000:]}")
                if time.time() > deadline:
                    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(url, timeout=120) as r:
                        if r.status == 200 and b"bokeh" in r.read().lower():
                            break
                except OSError:
                    time.sleep(0.5)
            yield url
        finally:
            proc.send_signal(signal.SIGTERM)  # the wrapper stops the server's process group, then exits
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


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
