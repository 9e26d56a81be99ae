"""docs/OWN_TASK.md's worked example, run verbatim: a task the embedded model never saw (count
the shapes, answers 1-4) written as JSONL + PNG files, `rlsys sft` on weak demonstrations, then
`rlsys train` with the task's own verifier. The held-out accuracy, scored by that verifier,
must rise by at least 20 points over the SFT checkpoint.

The commands are read from between the guide's `guide:begin` / `guide:end` markers, so the
guide cannot drift from what is tested; only TASK (where the files go) is set from outside.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "OWN_TASK.md"


def guide_commands(text: str) -> str:
    """The bash block between the guide markers."""
    section = re.search(r"<!-- guide:begin -->(.*?)<!-- guide:end -->", text, re.S)
    assert section, f"{GUIDE}: no guide:begin/guide:end section"
    (block,) = re.findall(r"```bash\n(.*?)```", section.group(1), re.S)
    return block


def test_guide_block_is_found():
    block = guide_commands(GUIDE.read_text())
    assert "rlsys sft" in block and "rlsys train" in block and "make_task.py" in block


def test_own_task_learns_from_the_guide(tmp_path):
    task = tmp_path / "count_shapes"
    t0 = time.perf_counter()
    out = subprocess.run(["bash", "-eo", "pipefail", "-c", guide_commands(GUIDE.read_text())], cwd=ROOT,
                         env={**os.environ, "TASK": str(task)}, capture_output=True, text=True, timeout=1200)
    seconds = time.perf_counter() - t0
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    assert (task / "sft-model" / "config.json").exists()
    (run,) = (task / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    before, after = summary["eval_before"], summary["eval_after"]
    # The verifier is the first component, named by its alias; the built-in accuracy is not scored.
    assert set(before["components"]) == {"count", "r1_format"}
    assert before["accuracy"] == before["components"]["count"]
    assert before["format_rate"] >= 0.9, before  # the cold start taught the format
    print(f"own task: held-out {before['accuracy']:.3f} -> {after['accuracy']:.3f} in {seconds:.0f} s")
    assert after["accuracy"] >= before["accuracy"] + 0.20, (before, after)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/count" in r for r in rows)
