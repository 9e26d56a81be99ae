"""The whole system learns: `rlsys train` on the embedded default (warm-started tiny VLM, GRPO,
real vLLM / DeepSpeed / Ray) raises the sampled reward and the held-out accuracy.

The warm-started model mostly guesses; looking at the image is right ~97% of the time
(rlsys/models/warmstart.py). Measured on seed 0: sampled accuracy ~0.5 over the first steps,
~0.9 by step 10-12; held-out greedy accuracy 0.62 -> 0.97 after 30 steps. 12 steps keep the
test to ~3 minutes (the model build is shared with the e2e test through the cache).
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
STEPS = 12


def test_grpo_on_the_embedded_default_raises_reward_and_held_out_accuracy(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "launch.cli", "train", f"total_steps={STEPS}",
         f"output_dir={tmp_path}", "logging.progress_bar=false", "logging.wandb=disabled",
         "logging.plot=false", "checkpoint.export_hf=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = tmp_path.iterdir()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    sampled = [r["reward/accuracy"] for r in rows if "reward/accuracy" in r]
    assert len(sampled) == STEPS
    first, last = sum(sampled[:3]) / 3, sum(sampled[-3:]) / 3
    assert last >= first + 0.2, sampled
    # Looking takes more words than guessing: the responses grow as accuracy rises.
    lengths = [r["batch/response_length_mean"] for r in rows if "batch/response_length_mean" in r]
    assert sum(lengths[-3:]) > sum(lengths[:3]), lengths
    summary = json.loads((run / "summary.json").read_text())
    before, after = summary["eval_before"]["accuracy"], summary["eval_after"]["accuracy"]
    assert after >= before + 0.15, (before, after)
