"""Pre-flight timings: how long a user waits to learn that the tracking store cannot be used.

Each case runs ``lrtrack.tracking.store.preflight(uri)`` in a fresh process (import time included,
as a user sees it) and prints the wall time and the one-line message. Every case must end
within 10 s with a ``TrackingUnavailable`` line.

    .venv/bin/python scripts/bench_preflight.py

Cases: a port nothing listens on, a server that accepts connections and never answers, an
unsupported scheme, a missing folder, a read-only folder (``chattr +i`` as root, else chmod),
a file that is not a database, and a good sqlite path for comparison.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = ("import sys\nfrom lrtrack.tracking.store import TrackingUnavailable, preflight\n"
        "try:\n    preflight(sys.argv[1])\nexcept TrackingUnavailable as err:\n"
        "    print(err)\n    sys.exit(2)\nprint('ok')\n")
LIMIT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_only(folder: Path) -> bool:
    """Make ``folder`` read-only for this user; False when that is impossible here."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return True
    return subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0


def run_case(name: str, uri: str) -> tuple[str, float, int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CODE, uri], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    took = time.monotonic() - start
    return name, took, proc.returncode, (proc.stdout.strip() or proc.stderr.strip()[-300:])


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as silent:
        tmp_path = Path(tmp)
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        ro = tmp_path / "read-only"
        ro.mkdir()
        (tmp_path / "notes.db").write_text("not a database")
        cases = [
            ("unreachable port", f"http://127.0.0.1:{free_port()}"),
            ("silent server", f"http://127.0.0.1:{silent.getsockname()[1]}"),
            ("garbage scheme", "garbage://x"),
            ("missing folder", f"sqlite:///{tmp_path}/missing/mlflow.db"),
            ("not a database", f"sqlite:///{tmp_path}/notes.db"),
            ("good sqlite path", f"sqlite:///{tmp_path}/mlflow.db"),
        ]
        locked = read_only(ro)
        if locked:
            cases.insert(3, ("read-only folder", f"sqlite:///{ro}/mlflow.db"))
        try:
            results = [run_case(name, uri) for name, uri in cases]
        finally:
            if locked and os.geteuid() == 0:
                subprocess.run(["chattr", "-i", str(ro)], check=False)
            ro.chmod(0o755)
    failed = 0
    for name, took, code, message in results:
        ok = took < LIMIT_S and (code == 2) == (name != "good sqlite path")
        failed += not ok
        print(f"{'ok ' if ok else 'BAD'} {name:18s} {took:5.2f} s  exit {code}  {message}")
    if not any(name == "read-only folder" for name, *_ in results):
        print("(read-only folder skipped: running as root without chattr)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
