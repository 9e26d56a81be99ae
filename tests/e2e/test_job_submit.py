"""`ray job submit` of the default job against a Ray head this test starts on 127.0.0.1.

The head and everything it spawned are stopped by what this test started (processes whose
command line names this test's Ray temp dir), never by a machine-wide `ray stop`.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_head import BIN, head_env, private_head

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ray_head():
    with private_head(num_cpus=6) as head:
        yield head.dashboard


def _submit(ray_head: str, job_id: str, args: list[str], env_vars: dict, wait: bool = True):
    """`ray job submit` of `python -m launch.train ARGS`, once the job server and its agent are up
    (`ray start` returns before they answer; a refusal for a missing agent creates no job, so the
    same submission is retried). -> the finished `ray job submit` process."""
    from ray.job_submission import JobSubmissionClient

    runtime_env = {"excludes": [".venv", ".git", "runs", "wandb", "*.egg-info", "__pycache__"],
                   "env_vars": {"RAY_AUTH_MODE": "disabled", **env_vars}}
    submit = [str(BIN / "ray"), "job", "submit", "--address", ray_head, "--submission-id", job_id,
              "--working-dir", str(ROOT), "--runtime-env-json", json.dumps(runtime_env),
              *([] if wait else ["--no-wait"]), "--", sys.executable, "-m", "launch.train", *args]
    deadline = time.time() + 180
    while True:
        try:
            JobSubmissionClient(ray_head).list_jobs()
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(2)
    while True:
        proc = subprocess.run(submit, env=head_env(), capture_output=True, text=True, timeout=900)
        if proc.returncode == 0 or "No available agent" not in proc.stderr or time.time() > deadline:
            return proc
        time.sleep(3)


def _job_args(out: Path, tiny_model_dir, steps: int) -> list[str]:
    return ["--config", "configs/default.yaml", "resources.address=auto", f"total_steps={steps}",
            "sampling.prompts_per_step=4", "rollout.n=4", "rollout.max_new_tokens=16", "eval.max_prompts=8",
            "logging.wandb=offline", "logging.progress_bar=false", f"output_dir={out}",
            f"model.path={tiny_model_dir}", "data.synthetic.train_size=64", "data.synthetic.test_size=8"]


def test_default_job_through_ray_job_submit(ray_head, tmp_path, tiny_model_dir):
    from ray.job_submission import JobStatus, JobSubmissionClient

    out = tmp_path / "runs"
    job_id = f"rlsys-e2e-{int(time.time())}"
    proc = _submit(ray_head, job_id, _job_args(out, tiny_model_dir, 2), {})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    status = JobSubmissionClient(ray_head).get_job_status(job_id)
    assert status == JobStatus.SUCCEEDED, proc.stdout[-4000:] + proc.stderr[-4000:]
    runs = list(out.glob("default-*/metrics.jsonl"))
    assert len(runs) == 1, list(out.glob("**/*"))
    rows = [json.loads(line) for line in runs[0].read_text().splitlines()]
    steps = [r for r in rows if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    # Each step's logged accuracy is the mean of the accuracy its recorded samples got.
    import pyarrow.parquet as pq

    for r in steps:
        rows_of_step = pq.read_table(runs[0].parent / "rollouts" / f"step_{r['step']:06d}.parquet").to_pylist()
        recorded = [dict(x["reward_components"])["accuracy"] for x in rows_of_step]
        assert len(recorded) == 4 * 4 and r["reward/accuracy"] == sum(recorded) / len(recorded)
    assert any("eval/accuracy" in r for r in rows)
    assert (runs[0].parent / "summary.json").exists()


def test_ray_job_stop_checkpoints_the_run(ray_head, tmp_path, tiny_model_dir):
    """`ray job stop` sends SIGTERM; with RAY_JOB_STOP_WAIT_TIME_S long enough the run writes a
    checkpoint and its summary before it exits, and the job ends STOPPED."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    out = tmp_path / "runs"
    job_id = f"rlsys-e2e-stop-{int(time.time())}"
    proc = _submit(ray_head, job_id, _job_args(out, tiny_model_dir, 50), {"RAY_JOB_STOP_WAIT_TIME_S": "120"},
                   wait=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = JobSubmissionClient(ray_head)
    deadline = time.time() + 600
    while not any('"step": 1,' in p.read_text() for p in out.glob("default-*/metrics.jsonl")):
        assert time.time() < deadline and client.get_job_status(job_id) in (JobStatus.PENDING, JobStatus.RUNNING), \
            client.get_job_logs(job_id)[-4000:]
        time.sleep(1)
    stop = subprocess.run([str(BIN / "ray"), "job", "stop", "--address", ray_head, job_id], env=head_env(),
                          capture_output=True, text=True, timeout=300)
    assert stop.returncode == 0, stop.stderr[-2000:]
    while client.get_job_status(job_id) not in (JobStatus.STOPPED, JobStatus.FAILED, JobStatus.SUCCEEDED):
        assert time.time() < deadline
        time.sleep(1)
    logs = client.get_job_logs(job_id)
    assert client.get_job_status(job_id) == JobStatus.STOPPED, logs[-4000:]
    (run_dir,) = out.glob("default-*")
    assert (run_dir / "summary.json").is_file(), logs[-6000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped"] == "SIGTERM" and 1 <= summary["steps"] < 50, logs[-4000:]
    assert Path(summary["checkpoint"]).is_dir() and f"resume: rlsys train --resume {run_dir}" in logs
