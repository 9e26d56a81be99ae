"""Synchronous vs asynchronous off-policy training on the embedded default.

    .venv/bin/python bench/async_staleness.py                    # k = 0, 1, 2; 30 steps each
    .venv/bin/python bench/async_staleness.py --ks 0 2 total_steps=10

Each arm is `python -m launch.train --config configs/ablation/online.yaml sampling.max_staleness=k`
in its own process (k = 0 is the synchronous loop; k > 0 generates the batches of the next k steps
while the learner trains, corrected by the truncated importance weight `algorithm.max_is_weight`,
2.0 in that config). Writes `table.md` and `accuracy.png` (rlsys/ablation.py) plus the per-arm
means of the version lag, the clipped importance-weight share and the stage times to --out.
Run it on a quiet machine: the arms are compared by wall time.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlsys.ablation import read_metrics, summarize  # noqa: E402

COLUMNS = ("async/version_lag_mean", "async/version_lag_max", "learner/is_weight_clip_frac",
           "time/generate", "time/update", "time/wait_ahead", "time/sync", "time/step")


def run_arm(k: int, overrides: list[str], runs_root: Path) -> Path:
    cmd = [sys.executable, "-m", "launch.train", "--config", str(ROOT / "configs/ablation/online.yaml"),
           f"name=async_k{k}", f"sampling.max_staleness={k}", "eval.every=5", *overrides,
           f"output_dir={runs_root}", "logging.progress_bar=false"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    return max(runs_root.glob(f"async_k{k}-*"), key=lambda p: p.stat().st_mtime)


def means(run_dir: Path) -> dict[str, float]:
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "time/step" in r]
    return {c: sum(r.get(c, 0.0) for r in rows) / len(rows) for c in COLUMNS}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results/async")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides for every arm")
    args = ap.parse_args()
    runs_root = ROOT / "runs" / f"async-{time.strftime('%Y%m%d-%H%M%S')}"
    t0 = time.perf_counter()
    dirs = [run_arm(k, args.overrides, runs_root) for k in args.ks]
    command = "python bench/async_staleness.py " + " ".join(
        [f"--ks {' '.join(map(str, args.ks))}", *args.overrides])
    table, _ = summarize(dirs, args.out, command=command.strip(),
                         title="Synchronous (k = 0) vs asynchronous off-policy (sampling.max_staleness = k)")
    lines = ["", "Per-step means (metrics.jsonl):", "",
             "| arm | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for k, d in zip(args.ks, dirs):
        m = means(d)
        lines.append(f"| async_k{k} | " + " | ".join(f"{m[c]:.3f}" for c in COLUMNS) + " |")
    lines.append(f"\nAll arms: {time.perf_counter() - t0:.0f} s wall time.")
    with open(table, "a") as f:
        f.write("\n".join(lines) + "\n")
    print(Path(table).read_text())
    print(json.dumps({str(d): means(d) for d in dirs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
