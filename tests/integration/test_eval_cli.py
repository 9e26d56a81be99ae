"""Evaluation with the run's own rewards: `rlsys eval` (vLLM, no Ray) and the driver's in-run
evaluation (reward actor), each scoring with a configured verifier that disagrees with the
built-in accuracy."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CONTRARY = '''
from rlsys.rewards import accuracy


def contrary(response, answer, metadata):
    return 1.0 - accuracy(response, answer, metadata)
'''


def _contrary(tmp_path) -> str:
    path = tmp_path / "contrary.py"
    path.write_text(CONTRARY)
    return f"{path}:contrary"


def test_eval_cli_reports_accuracy_and_format(tiny_model_dir, tmp_path):
    from rlsys.data.synthetic import write_synthetic_dataset

    _, test = write_synthetic_dataset(tmp_path, 8, 8, seed=1, families=["count_color"])
    out = subprocess.run([sys.executable, "-m", "launch.cli", "eval", "--model", str(tiny_model_dir),
                          "--data", str(test), "eval.max_prompts=6", "eval.max_new_tokens=8",
                          f"output_dir={tmp_path / 'runs'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    m = re.search(r"n=(\d+)\s+accuracy=([\d.]+)\s+format_rate=([\d.]+)", out.stdout)
    assert m, out.stdout[-2000:]
    # An untrained model: 6 greedy answers, none in the R1 format within 8 tokens, none right.
    assert (int(m.group(1)), float(m.group(2)), float(m.group(3))) == (6, 0.0, 0.0)


def test_eval_cli_scores_with_the_configured_verifier(tiny_model_dir, tmp_path):
    from rlsys.data.synthetic import write_synthetic_dataset

    _, test = write_synthetic_dataset(tmp_path, 8, 8, seed=1, families=["count_color"])
    out = subprocess.run([sys.executable, "-m", "launch.cli", "eval", "--model", str(tiny_model_dir),
                          "--data", str(test), "eval.max_prompts=6", "eval.max_new_tokens=8",
                          "eval.n=3", "eval.temperature=1.0", "eval.samples_logged=2",
                          f"eval.rewards=[{{name: '{_contrary(tmp_path)}', weight: 1.0}}, {{name: accuracy, weight: 1.0}}]",
                          f"output_dir={tmp_path / 'runs'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (tables,) = (tmp_path / "runs").iterdir()
    result = json.loads((tables / "results.json").read_text())
    contrary = next(k for k in result["components"] if k.endswith(":contrary"))
    # The untrained model is never right: the built-in accuracy says 0, the configured verifier 1.
    assert result["components"] == {contrary: 1.0, "accuracy": 0.0}
    assert result["accuracy"] == 1.0 and result["pass_at_k"] == 1.0
    assert result["n"] == 18 and result["samples_per_prompt"] == 3
    samples = [json.loads(line) for line in (tables / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(len(s["responses"]) == 3 and len(s["images"]) == 1 for s in samples)
    assert "pass@3=1.000" in out.stdout


def test_in_run_evaluation_uses_eval_rewards(ray_cluster, tiny_model_dir, task_data, tmp_path):
    from loop_config import small_loop_config
    from launch.evaluate import load_split
    from launch.roles import start_roles
    from rlsys.driver import Driver

    cfg = small_loop_config(task_data, tmp_path, prompts_per_step=2, n=2, overrides=[
        "total_steps=1", "eval.before_and_after=true", "eval.max_prompts=3", "eval.max_new_tokens=8",
        f"eval.rewards=[{{name: '{_contrary(tmp_path)}', weight: 1.0}}, {{name: accuracy, weight: 1.0}}]"])
    roles = start_roles(cfg, str(tiny_model_dir))
    try:
        driver = Driver(cfg, roles, load_split(cfg, task_data[0]), load_split(cfg, task_data[1]), tmp_path / "run")
        summary = driver.run()
    finally:
        roles.shutdown()
    for ev in (summary.eval_before, summary.eval_after):
        (contrary,) = [k for k in ev.components if k.endswith(":contrary")]
        assert ev.components[contrary] == 1.0 - ev.components["accuracy"]
        assert ev.accuracy == ev.components[contrary] and ev.n == 3
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval/accuracy"] for r in rows if "eval/accuracy" in r] == [summary.eval_before.accuracy,
                                                                          summary.eval_after.accuracy]
    assert (tmp_path / "run" / "eval" / "step_0" / "results.md").exists()
    assert (tmp_path / "run" / "eval" / "step_1" / "samples.jsonl").exists()
