"""Run one piece of work in a fresh Python process and report its wall time and peak memory.

Each measurement gets its own process so that peak RSS belongs to that work alone; the time is
taken inside the child around the work (imports excluded, for every contender alike)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
import importlib
module, func = {target!r}.rsplit(":", 1)
fn = getattr(importlib.import_module(module), func)
t0 = time.perf_counter()
out = fn(*{args!r})
wall = time.perf_counter() - t0
print("MEASURE " + json.dumps({{"wall_s": wall, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "result": out}}, default=str))
"""


def measure(target: str, *args) -> dict:
    """Call `module:function(*args)` in a child process; returns wall_s, peak_mb, result."""
    code = _CHILD.format(root=str(ROOT), target=target, args=tuple(args))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("MEASURE "):
            return json.loads(line[len("MEASURE "):])
    raise RuntimeError(f"{target} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def write_results(path: str | Path, lines: list[str]) -> None:
    """Write a benchmark's results file (Markdown lines) and show it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
