"""Latency of the local code sandbox: `print(1)` and a pandas `describe()` of a 10 MB CSV,
cold (a new sandboxed interpreter) and warm (the task's existing one), against a plain
`subprocess` Python as the floor. Prints p50/p99 and the ratios. Asserts nothing.

    .venv/bin/python bench/sandbox.py [--runs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.sandbox.bwrap import BwrapSandbox

PRINT = "print(1)"
DESCRIBE = "import pandas as pd\npd.read_csv('{path}').describe()"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def _csv(path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = 350_000  # about 10 MB of CSV
    data = np.column_stack([np.arange(rows), rng.normal(size=rows), rng.integers(0, 1000, rows),
                            rng.random(rows)])
    np.savetxt(path, data, delimiter=",", header="id,x,n,p", comments="", fmt="%.6g")


async def _bench(root: Path, runs: int) -> None:
    box = BwrapSandbox(root=root / "box")
    inputs = box.inputs("warm")
    inputs.mkdir(parents=True)
    _csv(inputs / "data.csv")
    size_mb = (inputs / "data.csv").stat().st_size / 1e6
    rows: list[tuple[str, list[float]]] = []

    for label, code in (("print(1)", PRINT),
                        ("pandas describe", DESCRIBE.format(path="inputs/data.csv"))):
        cold, warm, floor = [], [], []
        for i in range(runs):
            session = f"cold-{label}-{i}"
            cold_inputs = box.inputs(session)
            cold_inputs.mkdir(parents=True)
            (cold_inputs / "data.csv").hardlink_to(inputs / "data.csv")
            began = time.perf_counter()
            result = await box.run(session, code)
            cold.append(time.perf_counter() - began)
            assert result.error is None, result.error
            await box.close(session)
        await box.run("warm", code)
        for _ in range(runs):
            began = time.perf_counter()
            await box.run("warm", code)
            warm.append(time.perf_counter() - began)
        plain = code.replace("inputs/data.csv", str(inputs / "data.csv"))
        for _ in range(runs):
            began = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", plain, stdout=asyncio.subprocess.DEVNULL)
            assert await proc.wait() == 0
            floor.append(time.perf_counter() - began)
        rows += [(f"{label}: sandbox cold", cold), (f"{label}: sandbox warm", warm),
                 (f"{label}: plain subprocess", floor)]
    await box.aclose()

    print(f"code sandbox latency, {runs} runs each, CSV {size_mb:.1f} MB (milliseconds)")
    print(f"{'':<36}{'p50':>9}{'p99':>9}")
    for name, values in rows:
        print(f"{name:<36}{_pct(values, 0.5):>9.1f}{_pct(values, 0.99):>9.1f}")
    by = dict(rows)
    for label in ("print(1)", "pandas describe"):
        cold = statistics.median(by[f"{label}: sandbox cold"])
        floor = statistics.median(by[f"{label}: plain subprocess"])
        print(f"{label}: cold sandbox / plain subprocess = {cold / floor:.2f}x")
    print("published E2B sandbox start: ~150-450 ms at p50")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cadre-bench-") as tmp:
        asyncio.run(_bench(Path(tmp), args.runs))


if __name__ == "__main__":
    main()
