"""The own-task guide (docs/OWN_TASK.md, section 5) over several seeds: its commands verbatim,
with the seed of the task files, the SFT and the RL run set to each seed in turn. Writes
docs/results/own_task.md (held-out accuracy scored by the task's verifier, SFT checkpoint ->
after RL, and the wall time of the whole guide).

    python bench/own_task.py [SEED ...]       # default seeds 0 1 2; about 6 minutes a seed here
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "own_task.md"
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from test_own_task import GUIDE, guide_commands  # noqa: E402  (one reader of the guide)


def with_seed(block: str, seed: int) -> str:
    """The guide's commands with every seed (`--seed 0`, `seed=0`) set to `seed`."""
    return re.sub(r"(--seed |\bseed=)0\b", rf"\g<1>{seed}", block)


def run_seed(seed: int) -> dict:
    task = Path(tempfile.mkdtemp(prefix=f"own-task-{seed}-")) / "count_shapes"
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", "-eo", "pipefail", "-c", with_seed(guide_commands(GUIDE.read_text()), seed)],
                          cwd=ROOT, env={**os.environ, "TASK": str(task)}, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"seed {seed}: rc {proc.returncode}\n{proc.stderr[-3000:]}")
    (run,) = (task / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    return {"seed": seed, "before": summary["eval_before"]["accuracy"],
            "after": summary["eval_after"]["accuracy"], "seconds": seconds}


def main(seeds: list[int]) -> int:
    rows = []
    for seed in seeds:
        rows.append(run_seed(seed))
        print(json.dumps(rows[-1]), flush=True)
    lines = ["# Own task (docs/OWN_TASK.md): count the shapes", "",
             f"`python bench/own_task.py {' '.join(map(str, seeds))}` on this machine "
             f"({os.cpu_count()} cores, no GPU). Held-out accuracy on 64 prompts, greedy, scored by "
             "`examples/count_shapes/reward.py:count_correct`; \"SFT\" is the cold-start checkpoint "
             "(`rlsys sft`, one epoch: 32 steps), \"after\" the same after 40 GRPO steps. Time: the guide's "
             "commands end to end (task files, SFT, RL with both evaluations).", "",
             "| seed | held-out accuracy, SFT → after RL | whole guide |", "|---|---|---|"]
    lines += [f"| {r['seed']} | {r['before']:.3f} → {r['after']:.3f} ({100 * (r['after'] - r['before']):+.1f} points) "
              f"| {r['seconds'] / 60:.1f} min |" for r in rows]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main([int(s) for s in sys.argv[1:]] or [0, 1, 2]))
