"""Offline replay reader: real Parquet written by RolloutRecorder back into RolloutGroups joined
to the training prompts; every bad input names file, row and field."""
from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlsys.data import DataError
from rlsys.protocol import MediaItem, Prompt, RewardResult, Rollout, RolloutGroup, ScoredGroup
from rlsys.recording import RolloutRecorder
from rlsys.replay import read_replay, replay_files


def _prompt(i: int, images: int = 1) -> Prompt:
    imgs = [MediaItem(f"hash{i}_{k}", b"png", 56, 56) for k in range(images)]
    return Prompt(f"train:{i}", [{"role": "user", "content": f"q{i}"}], imgs, answer=str(i))


def _group(prompt: Prompt, g: int, version: int) -> ScoredGroup:
    rollouts = [Rollout([1, 2, 3], [10 + j, 11 + j][: 1 + j % 2], f"resp{j}", [-0.5 - j, -0.25][: 1 + j % 2],
                        "stop" if j % 2 else "length", version) for j in range(g)]
    return ScoredGroup(RolloutGroup(prompt, rollouts), RewardResult([float(j) for j in range(g)], {"accuracy": [0.0] * g}))


@pytest.fixture
def prompts():
    return [_prompt(i, images=i % 2) for i in range(4)]  # text-only and image prompts


@pytest.fixture
def run_dir(tmp_path, prompts):
    """A run directory as `rlsys train` leaves it: two steps, prompt 1 twice in step 2."""
    rec = RolloutRecorder(tmp_path / "run" / "rollouts")
    rec.write(1, [_group(prompts[0], 3, 0), _group(prompts[1], 3, 0)])
    rec.write(2, [_group(prompts[1], 3, 1), _group(prompts[1], 3, 1), _group(prompts[2], 2, 1)])
    return tmp_path / "run"


def test_groups_round_trip_joined_to_training_prompts(run_dir, prompts):
    groups = read_replay(run_dir, prompts)
    assert [g.prompt.uid for g in groups] == ["train:0", "train:1", "train:1", "train:1", "train:2"]
    assert [g.size for g in groups] == [3, 3, 3, 3, 2]
    # The prompt object is the dataset's: its images (pixels) come from there, not the file.
    assert groups[1].prompt is prompts[1] and groups[1].prompt.images[0].png == b"png"
    original = _group(prompts[0], 3, 0).group.rollouts
    for got, want in zip(groups[0].rollouts, original):
        assert got.prompt_token_ids == want.prompt_token_ids
        assert got.response_token_ids == want.response_token_ids
        assert got.response_text == want.response_text and got.finish_reason == want.finish_reason
        assert got.behaviour_logprobs == pytest.approx(want.behaviour_logprobs)
    assert {r.policy_version for g in groups[1:] for r in g.rollouts} == {0, 1}


def test_path_forms_run_dir_rollouts_dir_and_one_file(run_dir, prompts):
    files = replay_files(run_dir)
    assert [f.name for f in files] == ["step_000001.parquet", "step_000002.parquet"]
    assert replay_files(run_dir / "rollouts") == files
    assert [g.size for g in read_replay(files[1], prompts)] == [3, 3, 2]
    with pytest.raises(DataError, match="not found"):
        replay_files(run_dir / "nope")
    (run_dir / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no \.parquet files"):
        replay_files(run_dir / "empty")


def _rewrite(file, edit):
    """Applies `edit(rows)` to a recorded file, keeping the recorder's schema."""
    rows = pq.read_table(file).to_pylist()
    edit(rows)
    schema = RolloutRecorder(file.parent)._schema()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), file)


@pytest.mark.parametrize("row, field, value, reason", [
    (2, "prompt_uid", "train:99", "'train:99' is not in the training prompts"),
    (4, "behaviour_logprobs", [-0.1, -0.2, -0.3], "3 values for 2 response tokens"),
    (1, "behaviour_logprobs", [float("nan")], "must be a list of finite numbers"),
    (0, "response_token_ids", None, "must be a list of token ids"),
    (5, "finish_reason", "eos", "'eos': must be one of stop, length, abort"),
    (3, "image_hashes", ["other"], "differ from the training prompt's images"),
    (0, "answer", "7", "'7' differs from the training prompt's answer '0'"),
    (1, "sample_index", 2, "2: expected 1"),
    (3, "sample_index", 1, "1: expected 0"),
    (0, "policy_version", -1, "-1: must be an integer >= 0"),
    (0, "prompt_token_ids", [], "empty"),
])
def test_bad_row_names_file_row_and_field(run_dir, prompts, row, field, value, reason):
    file = run_dir / "rollouts" / "step_000001.parquet"

    def edit(rows):
        rows[row][field] = value

    _rewrite(file, edit)
    with pytest.raises(DataError) as info:
        read_replay(run_dir, prompts)
    err = info.value
    assert (err.source, err.row, err.field) == (str(file), row, field)
    assert str(err).startswith(f"{file}: row {row}: {field}: ")
    assert reason in err.reason


def test_missing_column_and_unreadable_file(run_dir, prompts):
    file = run_dir / "rollouts" / "step_000002.parquet"
    pq.write_table(pq.read_table(file).drop(["behaviour_logprobs"]), file)
    with pytest.raises(DataError, match=re.escape(f"{file}: behaviour_logprobs: missing column")):
        read_replay(run_dir, prompts)
    file.write_bytes(b"not parquet")
    with pytest.raises(DataError, match=re.escape(f"{file}: not a readable Parquet file")):
        read_replay(run_dir, prompts)


def test_groups_smaller_than_the_algorithm_needs_are_rejected(tmp_path, prompts):
    rec = RolloutRecorder(tmp_path / "rollouts")
    rec.write(1, [_group(prompts[0], 2, 0), _group(prompts[1], 1, 0)])
    assert [g.size for g in read_replay(tmp_path, prompts, min_group_size=1)] == [2, 1]
    with pytest.raises(DataError, match=r"step_000001.parquet: row 2: sample_index: group of 1 sample"):
        read_replay(tmp_path, prompts, min_group_size=2)
