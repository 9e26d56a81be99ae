"""Reward faults in the real loop: a user reward that raises on every call stops the run with one
line and a checkpoint; one that hangs and a remote reward on a closed port cost bounded time and
are counted, and the run completes; a reward with the wrong signature is refused by
`python -m launch.train` before Ray starts."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loop_config import small_loop_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
B, G = 4, 4


def _reward_file(tmp_path, body: str) -> str:
    path = tmp_path / "user_reward.py"
    path.write_text("import time\n\n\ndef reward(response, answer, metadata):\n" + body + "\n")
    return f"{path}:reward"


def _run(task_data, tmp_path, components: str, overrides=()):
    from launch.evaluate import load_split
    from launch.roles import start_roles
    from rlsys.driver import Driver

    cfg = small_loop_config(task_data, tmp_path / "out", B, G, [
        "checkpoint.export_hf=false", f"reward.components={components}", *overrides])
    roles = start_roles(cfg, str(_run.model_dir))
    driver = Driver(cfg, roles, load_split(cfg, task_data[0]), load_split(cfg, task_data[1]), tmp_path / "run",
                    skipped_rows={"train": 2, "test": 0})
    try:
        return driver, driver.run()
    finally:
        roles.shutdown()


@pytest.fixture(autouse=True)
def _model(tiny_model_dir):
    _run.model_dir = tiny_model_dir


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "reward/mean" in line]


def test_a_reward_that_always_raises_stops_the_run(ray_cluster, task_data, tmp_path, fault_record):
    from rlsys.rewards import RewardFailureError

    spec = _reward_file(tmp_path, "    raise KeyError('solution')")
    with pytest.raises(RewardFailureError) as err:
        _run(task_data, tmp_path, f"[{{name: '{spec}', weight: 1.0}}, {{name: accuracy, weight: 1.0}}]",
             ["total_steps=5", "reward.max_failed_steps=2"])
    message = str(err.value)
    assert "\n" not in message and spec in message and "KeyError: 'solution'" in message
    assert "for 2 consecutive steps" in message and "first failure this step: prompt" in message
    # Stopped in step 2 before its update: the checkpoint is of step 1, step 2 is drawn again.
    assert err.value.checkpoint == tmp_path / "run" / "checkpoints" / "step_1"
    assert [r["step"] for r in _rows(tmp_path / "run")] == [1]
    fault_record(fault="a user reward that raises on every call",
                 outcome="stopped after reward.max_failed_steps steps with one line naming the reward, its "
                         "exception and the first failing sample; checkpoint of the last step",
                 recovery_s=None, lost="nothing")


def test_a_hanging_reward_costs_bounded_time(ray_cluster, task_data, tmp_path, fault_record):
    spec = _reward_file(tmp_path, "    time.sleep(600)")
    timeout_s = 2.0
    _, summary = _run(task_data, tmp_path, f"[{{name: '{spec}', weight: 1.0}}, {{name: accuracy, weight: 1.0}}]",
                      ["total_steps=2", f"reward.timeout_s={timeout_s}", "reward.max_failed_steps=3"])
    rows = _rows(tmp_path / "run")
    assert summary.steps == 2 and [r["reward/failures"] for r in rows] == [B * G, B * G]
    # One scoring call per streamed group, each bounded by the deadline (plus worker restarts).
    per_group = max(r["time/step"] for r in rows) / B
    assert per_group / timeout_s < 4, rows
    fault_record(fault=f"a user reward that hangs (reward.timeout_s = {timeout_s:g})",
                 outcome=f"every sample scored 0 and counted; {per_group:.1f} s per streamed group "
                         f"({per_group / timeout_s:.1f}x the deadline); the run completed",
                 recovery_s=None, lost="nothing (the hanging component scores 0)")


def test_a_remote_reward_on_a_closed_port(ray_cluster, task_data, tmp_path, fault_record):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    t0 = time.time()
    _, summary = _run(task_data, tmp_path,
                      f"[{{name: 'http://127.0.0.1:{port}/score', weight: 1.0}}, {{name: accuracy, weight: 1.0}}]",
                      ["total_steps=3", "reward.max_failed_steps=5"])
    rows = _rows(tmp_path / "run")
    assert summary.steps == 3 and all(r["reward/failures"] == B * G for r in rows)
    # The rows skipped at load (data.on_bad_row = skip) are in every step's row and the summary.
    assert {(r["data/skipped_rows_train"], r["data/skipped_rows_test"]) for r in rows} == {(2.0, 0.0)}
    summary_file = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary_file["skipped_rows"] == {"train": 2, "test": 0}
    fault_record(fault="a remote reward on a closed port of 127.0.0.1",
                 outcome=f"retries, then the breaker opened; every sample counted as failed; 3 steps in "
                         f"{time.time() - t0:.0f} s with the actors' start",
                 recovery_s=None, lost="nothing (the remote component scores 0)")


def test_a_reward_with_the_wrong_signature_is_refused_before_ray_starts(tiny_model_dir, tmp_path, fault_record):
    path = tmp_path / "no_form.py"
    path.write_text("def reward(completion, answer=None, **kwargs):\n    return 1.0\n")
    code = ("import sys; from launch.train import main; "
            f"rc = main(['model.path={tiny_model_dir}', 'output_dir={tmp_path / 'runs'}', "
            "'data.synthetic.train_size=16', 'data.synthetic.test_size=4', "
            f"\"reward.components=[{{name: '{path}:reward', weight: 1.0}}]\"]); "
            "print('ray' in sys.modules); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"rlsys: reward '{path}:reward'") and "cannot call reward(completion, answer=None" in line
    assert out.stdout.strip().splitlines()[-1] == "False" and not (tmp_path / "runs").exists()
    fault_record(fault="a user reward whose signature no form accepts (`completion`, singular)", outcome=f"refused before Ray started: '{line}'",
                 recovery_s=None, lost="nothing (nothing started)")
