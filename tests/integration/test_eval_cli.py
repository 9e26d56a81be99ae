"""`rlsys eval --model DIR --data FILE`: vLLM greedy generation, accuracy and format rate printed."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_eval_cli_reports_accuracy_and_format(tiny_model_dir, tmp_path):
    from rlsys.data.synthetic import write_synthetic_dataset

    _, test = write_synthetic_dataset(tmp_path, 8, 8, seed=1, families=["count_color"])
    out = subprocess.run([sys.executable, "-m", "launch.cli", "eval", "--model", str(tiny_model_dir),
                          "--data", str(test), "eval.max_prompts=6", "eval.max_new_tokens=8"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    m = re.search(r"n=(\d+)\s+accuracy=([\d.]+)\s+format_rate=([\d.]+)", out.stdout)
    assert m, out.stdout[-2000:]
    # An untrained model: 6 greedy answers, none in the R1 format within 8 tokens.
    assert int(m.group(1)) == 6 and 0.0 <= float(m.group(2)) <= 1.0 and float(m.group(3)) == 0.0
