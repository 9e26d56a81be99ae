"""rlsys/checkpoint.py on real directories: atomic save, validation of missing / partial / corrupt
checkpoints with one-line errors, the latest checkpoint of a run, pruning; and the train entry
point refusing a bad `checkpoint.resume_from` before it builds or starts anything."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlsys import checkpoint
from rlsys.checkpoint import CheckpointError, RunState

ROOT = Path(__file__).resolve().parents[2]


def _state(step: int) -> RunState:
    return RunState(step=step, version=step, sampler={"epoch": 0, "position": 16 * step},
                    replay_sampler=None, eval_before=None, config={"seed": 0})


def _save_parts(parts=("learner",)):
    """What Roles.save_checkpoint leaves: DeepSpeed's `latest` file and its tag directory."""
    def write(directory: Path) -> None:
        for part in parts:
            (directory / part / "learner").mkdir(parents=True)
            (directory / part / "learner" / "mp_rank_00_model_states.pt").write_bytes(b"x")
            (directory / part / "latest").write_text("learner")
    return write


def test_save_then_validate_and_load(tmp_path):
    path = checkpoint.save(tmp_path / "checkpoints" / "step_2", _state(2), _save_parts())
    assert checkpoint.validate(path, has_critic=False) == _state(2)
    assert not (tmp_path / "checkpoints" / "step_2.partial").exists()
    # Overwriting an existing checkpoint of the same name replaces it whole.
    checkpoint.save(path, _state(3), _save_parts())
    assert checkpoint.load_state(path).step == 3


def test_a_save_that_fails_midway_leaves_no_checkpoint(tmp_path):
    def crash(directory: Path) -> None:
        _save_parts()(directory)
        raise RuntimeError("learner died while saving")

    with pytest.raises(RuntimeError):
        checkpoint.save(tmp_path / "checkpoints" / "step_4", _state(4), crash)
    assert not (tmp_path / "checkpoints" / "step_4").exists()
    assert checkpoint.latest(tmp_path) is None
    with pytest.raises(CheckpointError, match="partial checkpoint"):
        checkpoint.validate(tmp_path / "checkpoints" / "step_4.partial", has_critic=False)


@pytest.mark.parametrize("damage, message", [
    ("missing_dir", "no such checkpoint directory"),
    ("no_state", "run_state.json missing"),
    ("bad_json", "unreadable"),
    ("old_format", "not an rlsys checkpoint"),
    ("missing_key", "corrupt (missing version)"),
    ("no_learner", "learner/ has no saved state"),
    ("no_critic", "critic/ has no saved state"),
])
def test_bad_checkpoints_give_one_line_naming_the_path(tmp_path, damage, message):
    path = checkpoint.save(tmp_path / "ckpt", _state(1), _save_parts())
    state_file = path / checkpoint.STATE_FILE
    raw = json.loads(state_file.read_text())
    if damage == "missing_dir":
        path = tmp_path / "nowhere"
    elif damage == "no_state":
        state_file.unlink()
    elif damage == "bad_json":
        state_file.write_text("{not json")
    elif damage == "old_format":
        state_file.write_text(json.dumps({**raw, "format": 0}))
    elif damage == "missing_key":
        del raw["version"]
        state_file.write_text(json.dumps(raw))
    elif damage == "no_learner":
        (path / "learner" / "latest").unlink()
    with pytest.raises(CheckpointError) as err:
        checkpoint.validate(path, has_critic=damage == "no_critic")
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text


def test_latest_prefers_most_steps_and_prune_keeps_the_newest(tmp_path):
    for step in (2, 4, 10):
        checkpoint.save(tmp_path / "checkpoints" / f"step_{step}", _state(step), _save_parts())
    (tmp_path / "checkpoints" / "step_12.partial").mkdir()  # an unfinished save is ignored
    assert checkpoint.latest(tmp_path) == tmp_path / "checkpoints" / "step_10"
    checkpoint.save(tmp_path / "checkpoints" / "final", _state(12), _save_parts())
    assert checkpoint.latest(tmp_path) == tmp_path / "checkpoints" / "final"
    removed = checkpoint.prune(tmp_path, keep_last=2)
    assert removed == [tmp_path / "checkpoints" / "step_2"]
    assert [s for s, _ in checkpoint.step_checkpoints(tmp_path)] == [4, 10]
    assert checkpoint.prune(tmp_path, keep_last=0) == []


def test_train_refuses_a_missing_resume_dir_before_starting_anything(tmp_path):
    """One line on stderr, exit 2, no run directory, and neither Ray nor vLLM ever imported
    (torch is: config validation reads the algorithm registries)."""
    code = ("import sys; from launch.train import main; "
            f"rc = main(['checkpoint.resume_from=/no/such/dir', 'output_dir={tmp_path / 'runs'}']); "
            "print(sorted(m for m in ('ray', 'vllm', 'deepspeed') if m in sys.modules)); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "rlsys: checkpoint.resume_from: /no/such/dir: no such checkpoint directory"]
    assert out.stdout.strip() == "[]"
    assert not (tmp_path / "runs").exists()
