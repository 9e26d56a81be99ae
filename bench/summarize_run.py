"""Per-stage time breakdown and accuracy of finished runs, as a Markdown table.

    python bench/summarize_run.py runs/default-*          # one row per run + stage breakdown
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def load(run: Path) -> tuple[list[dict], dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    return rows, summary


def stage_table(rows: list[dict]) -> str:
    steps = [r for r in rows if "time/step" in r]
    # The first step includes engine warm-up; report the steady state separately.
    steady = steps[1:] or steps
    keys = [k for k in steady[0] if k.startswith("time/") and k != "time/step"]
    mean = {k: sum(r[k] for r in steady) / len(steady) for k in keys + ["time/step"]}
    lines = ["| stage | mean s/step | share |", "|---|---|---|"]
    for k in keys:
        lines.append(f"| {k.split('/', 1)[1]} | {mean[k]:.3f} | {100 * mean[k] / mean['time/step']:.1f}% |")
    total = sum(mean[k] for k in keys)
    lines.append(f"| **step (wall)** | {mean['time/step']:.3f} | stages + overhead = {100 * total / mean['time/step']:.1f}% |")
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    print("| run | seed | acc before | acc after | gain | format after | steps | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    last_rows = None
    for p in map(Path, paths):
        rows, s = load(p)
        seed = json.loads(json.dumps(s)).get("seed", "")
        cfg = (p / "config.yaml").read_text()
        seed = next((line.split(":")[1].strip() for line in cfg.splitlines() if line.startswith("seed:")), seed)
        b, a = s["eval_before"], s["eval_after"]
        print(f"| {p.name} | {seed} | {b['accuracy']:.3f} | {a['accuracy']:.3f} | {a['accuracy'] - b['accuracy']:+.3f} "
              f"| {a['format_rate']:.3f} | {s['steps']} | {s['seconds']:.0f} |")
        last_rows = rows
    if last_rows:
        print("\nStage breakdown of the last run (steps 2..N):\n")
        print(stage_table(last_rows))


if __name__ == "__main__":
    main(sys.argv[1:])
