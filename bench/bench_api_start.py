"""The API's start: ``import services.api`` + ``create_app`` (every job kind registered), and the process's
resident memory once started, for this tree and for another checkout (the code before issue 22), side by side.

Each run is a fresh interpreter with a fresh DATA_DIR; the figures are the median of ``--runs`` runs each.

Usage: ``python bench/bench_api_start.py [--before /tmp/before] [--runs 5]``, where ``/tmp/before`` is made
with ``git worktree add /tmp/before 8bbe27e`` (never a checkout in the working tree). Both trees run with
this interpreter (the project's .venv).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
BEFORE_COMMIT = "8bbe27e"  # the tree before issue 22 (the API imported the whole ML stack)
# Run in the measured tree: the start as gunicorn's worker makes it, then the idle process's figures.
PROBE = """
import gc, json, sys, time
started = time.perf_counter()
import services.api
app = services.api.create_app()  # its config from the environment (DATA_DIR), in either layout
seconds = time.perf_counter() - started
gc.collect()
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
print(json.dumps({"seconds": seconds, "rss_mb": rss / 1024, "torch": "torch" in sys.modules,
                  "modules": len(sys.modules)}))
"""


def one_run(tree: Path) -> dict:
    """Start the API of ``tree`` once in a new interpreter; its figures."""
    with tempfile.TemporaryDirectory() as data_dir:
        env = {"DATA_DIR": data_dir, "PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}
        done = subprocess.run([sys.executable, "-c", PROBE], cwd=tree, env=env, capture_output=True, text=True,
                              timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def medians(tree: Path, runs: int) -> dict:
    """The median seconds and RSS of ``runs`` starts of ``tree``."""
    found = [one_run(tree) for _ in range(runs)]
    return {"seconds": statistics.median(r["seconds"] for r in found),
            "rss_mb": statistics.median(r["rss_mb"] for r in found),
            "torch": any(r["torch"] for r in found), "modules": statistics.median(r["modules"] for r in found)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, default=Path("/tmp/before"), help="the other checkout")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not args.before.exists():  # a detached worktree of the commit before, beside this checkout's .git
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", str(args.before), BEFORE_COMMIT],
                       check=True, capture_output=True)
    trees = {"before": args.before.resolve(), "after": HERE}
    figures = {name: medians(tree, args.runs) for name, tree in trees.items()}
    print(f"API start (import services.api + create_app), median of {args.runs} runs each")
    print(f"{'':8}{'start s':>10}{'idle RSS MB':>14}{'modules':>10}{'torch':>8}")
    for name, f in figures.items():
        torch = "yes" if f["torch"] else "no"
        print(f"{name:8}{f['seconds']:>10.2f}{f['rss_mb']:>14.0f}{f['modules']:>10.0f}{torch:>8}")


if __name__ == "__main__":
    main()
