"""How long `cadre up` takes to be ready, cold (first start: initdb, migrations) and warm
(existing data), and how long a clean stop takes. Prints a table; asserts nothing.

    .venv/bin/python bench/stack_startup.py [--runs 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READY = "Press Ctrl-C to stop everything."


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _one_run(cwd: Path, workers: int) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "SQS_QUEUE_URL", "CADRE_HOME")}
    env.update(CADRE_API_PORT=str(_port()), CADRE_PG_PORT=str(_port()),
               CADRE_REDIS_PORT=str(_port()), CADRE_SQS_PORT=str(_port()))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "up", "--workers", str(workers)],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if READY in line:
            break
    else:
        raise SystemExit(f"cadre up exited with {proc.wait()} before it was ready")
    ready = time.perf_counter() - start
    stop_start = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    proc.stdout.read()
    proc.wait(timeout=120)
    return ready, time.perf_counter() - stop_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cold_ready, warm_ready, stops = [], [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="cadre-bench-") as tmp:
            ready, stop = _one_run(Path(tmp), args.workers)
            cold_ready.append(ready)
            stops.append(stop)
            ready, stop = _one_run(Path(tmp), args.workers)
            warm_ready.append(ready)
            stops.append(stop)
    print(f"cadre up, {args.workers} workers, {args.runs} runs each (seconds)")
    print(f"{'phase':<30}{'median':>8}{'min':>8}{'max':>8}")
    for name, values in (("ready, cold (first start)", cold_ready),
                         ("ready, warm (existing data)", warm_ready),
                         ("clean stop (SIGTERM)", stops)):
        print(f"{name:<30}{statistics.median(values):>8.2f}{min(values):>8.2f}{max(values):>8.2f}")


if __name__ == "__main__":
    main()
