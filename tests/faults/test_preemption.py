"""Preemption of the real `python -m launch.train` process: SIGTERM to its whole process group
(what a scheduler, `ray job stop` and Ctrl-C do: the private Ray under the driver gets it too)
stops the run at the next step boundary with a checkpoint, metrics flushed and a resume command,
exit code 75 and no signal dump; `--resume RUN_DIR` then finishes the run in the same directory,
and the resumed steps are bit-identical to an uninterrupted run of the same seed. A second
SIGINT exits at once; kill -9 of the driver leaves no process behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
STEPS = 5


def _command(tiny_model_dir, out: Path) -> list[str]:
    return [sys.executable, "-m", "launch.train", "--config", "configs/default.yaml",
            f"total_steps={STEPS}", "sampling.prompts_per_step=4", "rollout.n=4", "rollout.max_new_tokens=12",
            "eval.before_and_after=false", "checkpoint.export_hf=false", "logging.wandb=offline",
            "logging.progress_bar=false", f"output_dir={out}", f"model.path={tiny_model_dir}",
            "data.synthetic.train_size=64", "data.synthetic.test_size=8", "resources.num_cpus=4"]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _rows(run_dir: Path) -> dict[int, dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out: dict[int, dict] = {}
    for r in rows:
        assert r["step"] not in out, f"step {r['step']} logged twice"
        out[r["step"]] = r
    return out


def _samples(run_dir: Path, step: int):
    import pyarrow.parquet as pq

    rows = pq.read_table(run_dir / "rollouts" / f"step_{step:06d}.parquet").to_pylist()
    return [(r["prompt_uid"], r["response_token_ids"], r["reward"]) for r in rows]


def _start_and_wait_for_step(cmd, out: Path, step: int, timeout_s: float = 600):
    # Its own session: the signals below go to the run's whole process group, as a terminal's
    # or a scheduler's do.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        runs = list(out.glob("default-*"))
        if runs and step in _rows(runs[0]):
            return proc, runs[0]
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"run did not reach step {step}: {proc.communicate()[1][-3000:]}")


def test_sigterm_checkpoints_and_resume_is_exact(tiny_model_dir, tmp_path, fault_record):
    full_out, cut_out = tmp_path / "full", tmp_path / "cut"
    full = subprocess.run(_command(tiny_model_dir, full_out), cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=900)
    assert full.returncode == 0, full.stderr[-3000:]
    (full_dir,) = full_out.glob("default-*")

    proc, run_dir = _start_and_wait_for_step(_command(tiny_model_dir, cut_out), cut_out, 2)
    os.killpg(proc.pid, signal.SIGTERM)
    signalled = time.time()
    stdout, stderr = proc.communicate(timeout=300)
    stop_s = time.time() - signalled
    assert proc.returncode == 75, stderr[-3000:]
    assert "Fatal Python error" not in stderr and "*** SIG" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert f"resume: rlsys train --resume {run_dir}" in stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    stopped_at = summary["steps"]
    assert summary["stopped"] == "SIGTERM" and 2 <= stopped_at < STEPS
    assert summary["checkpoint"] == str(run_dir / "checkpoints" / f"step_{stopped_at}")
    assert sorted(_rows(run_dir)) == list(range(1, stopped_at + 1))  # flushed, each step once
    assert list((run_dir / "wandb").glob("offline-run-*")), "wandb offline run not written"

    resumed = subprocess.run([sys.executable, "-m", "launch.train", "--resume", str(run_dir)], cwd=ROOT,
                             env=_env(), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert list(cut_out.glob("default-*")) == [run_dir]  # continued in the same directory
    rows, full_rows = _rows(run_dir), _rows(full_dir)
    assert sorted(rows) == sorted(full_rows) == list(range(1, STEPS + 1))
    for step in range(stopped_at + 1, STEPS + 1):
        assert _samples(run_dir, step) == _samples(full_dir, step), f"step {step} sampled differently"
        # A step whose batch carried no gradient has no learner figures, in both runs alike.
        for key in ("reward/mean", "learner/policy_loss", "learner/grad_norm", "learner/no_signal_skipped"):
            assert rows[step].get(key) == full_rows[step].get(key), (step, key)
    assert _final_weights(run_dir) == _final_weights(full_dir)
    fault_record(fault="SIGTERM to the process group of `python -m launch.train` in step 3", outcome=f"checkpoint step_{stopped_at}, rc 75; "
                 "`--resume` finished in the same run dir, bit-identical to an uninterrupted run",
                 recovery_s=stop_s, lost="nothing")


def _final_weights(run_dir: Path) -> str:
    """sha256 over the final checkpoint's policy tensors (DeepSpeed's module state)."""
    import hashlib

    import torch

    (states,) = (run_dir / "checkpoints" / "final" / "learner").glob("*/mp_rank_00_model_states.pt")
    module = torch.load(states, map_location="cpu", weights_only=False)["module"]
    h = hashlib.sha256()
    for name in sorted(module):
        h.update(name.encode())
        h.update(module[name].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_a_second_sigint_exits_at_once(tiny_model_dir, tmp_path):
    proc, run_dir = _start_and_wait_for_step(_command(tiny_model_dir, tmp_path), tmp_path, 1)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, stderr[-2000:]
    assert "SIGINT again: exiting now" in stderr


def test_kill_9_of_the_driver_leaves_no_process_behind(tiny_model_dir, tmp_path, fault_record):
    """Every process the driver started (its private Ray: GCS, raylet, agents, the actors) ends
    with it. Ray's dashboard and runtime-env agents wait a fixed 60 s to report the raylet's
    death to the dead GCS, so the bound is generous."""
    import psutil

    proc, _ = _start_and_wait_for_step(_command(tiny_model_dir, tmp_path), tmp_path, 1)
    started = psutil.Process(proc.pid).children(recursive=True)
    assert any("raylet" in " ".join(p.cmdline()) for p in started), [p.name() for p in started]
    killed = time.time()
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    deadline = killed + 180
    while time.time() < deadline:
        alive = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            break
        time.sleep(1)
    assert not alive, [(p.pid, " ".join(p.cmdline())[:80]) for p in alive]
    fault_record(fault="kill -9 of the driver", outcome=f"all {len(started)} processes it started exited",
                 recovery_s=time.time() - killed,
                 lost="nothing saved is lost: `--resume` continues from the last checkpoint (a driver killed "
                      "with -9 cannot write one, so at most checkpoint.save_every steps are redone)")
