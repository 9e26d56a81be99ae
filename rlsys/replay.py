"""Offline rollouts: what `RolloutRecorder` wrote, read back as `RolloutGroup`s. No Ray.

Where `sampling.offline_path` may point:
  - a run directory (its `rollouts/` is read),
  - a directory of `step_*.parquet` files (read in name order, i.e. step order),
  - one `.parquet` file.

A record holds only the content hashes of a prompt's images (the pixels stay in the dataset), so
each row is joined to the training prompts by `prompt_uid`; the recorded image hashes and answer
must equal the joined prompt's, otherwise the recording belongs to a different dataset (or
different image-resizing settings) and replaying it would train on the wrong pictures.

The recorder writes a group's G samples as consecutive rows numbered `sample_index` 0..G-1;
a row with `sample_index` 0 starts the next group. Rewards in the file are not used: replayed
groups are re-scored by the run's own reward config. The behaviour log-probs are kept: they are
the old log-probs of the sampling policy, which the learner's mismatch report and truncated
importance weight (`algorithm.max_is_weight`) compare with the current policy.

Every problem raises `DataError("<file>: row <i>: <field>: <reason>")` (rows 0-based).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from rlsys.data import DataError
from rlsys.protocol import Prompt, Rollout, RolloutGroup
from rlsys.recording import SCHEMA_FIELDS

FINISH_REASONS = ("stop", "length", "abort")
# The recorder's columns that replay needs (rewards are re-scored, the step is not needed).
REQUIRED_COLUMNS = tuple(c for c in SCHEMA_FIELDS if c not in ("step", "reward", "reward_components", "reward_texts"))


def replay_files(path: str | Path) -> list[Path]:
    """The Parquet files `path` names (see the module doc), in step order."""
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise DataError("not found (sampling.offline_path must be a run directory, a rollouts "
                        "directory or a .parquet file)", source=str(p))
    if not any(p.glob("*.parquet")) and (p / "rollouts").is_dir():
        p = p / "rollouts"
    files = sorted(p.glob("*.parquet"))  # hidden .tmp files of a step being written are skipped
    if not files:
        raise DataError("no .parquet files (expected step_*.parquet written by a run)", source=str(p))
    return files


def read_replay(path: str | Path, prompts: Sequence[Prompt] | Mapping[str, Prompt],
                min_group_size: int = 1) -> list[RolloutGroup]:
    """All recorded groups under `path`, joined to `prompts` (the run's training prompts)."""
    by_uid = prompts if isinstance(prompts, Mapping) else {p.uid: p for p in prompts}
    groups: list[RolloutGroup] = []
    for file in replay_files(path):
        groups += read_replay_file(file, by_uid, min_group_size)
    return groups


def read_replay_file(file: Path, prompts: Mapping[str, Prompt], min_group_size: int = 1) -> list[RolloutGroup]:
    rows = _read_rows(file)
    groups: list[RolloutGroup] = []
    start_row = 0
    for i, row in enumerate(rows):
        prompt, rollout = _parse_row(row, prompts, file, i)
        index = row["sample_index"]
        if index == 0:
            _check_size(groups, min_group_size, file, start_row)
            groups.append(RolloutGroup(prompt, [rollout]))
            start_row = i
            continue
        current = groups[-1] if groups else None
        if current is None or current.prompt.uid != prompt.uid or index != current.size:
            expected = 0 if current is None or current.prompt.uid != prompt.uid else current.size
            raise DataError(f"{index}: expected {expected} (a group's samples are consecutive rows "
                            "numbered from 0)", source=str(file), row=i, field="sample_index")
        current.rollouts.append(rollout)
    _check_size(groups, min_group_size, file, start_row)
    return groups


def _check_size(groups: list[RolloutGroup], min_size: int, file: Path, row: int) -> None:
    if groups and groups[-1].size < min_size:
        raise DataError(f"group of {groups[-1].size} sample(s); the algorithm needs >= {min_size} per "
                        "prompt for its baseline", source=str(file), row=row, field="sample_index")


def _read_rows(file: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except Exception as err:  # pyarrow raises several types for a corrupt / non-Parquet file
        raise DataError(f"not a readable Parquet file ({type(err).__name__}: {err})", source=str(file)) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError("missing column (not a rollout recording?)", source=str(file), field=missing[0])
    return table.select(list(REQUIRED_COLUMNS)).to_pylist()


def _parse_row(row: dict[str, Any], prompts: Mapping[str, Prompt], file: Path, i: int) -> tuple[Prompt, Rollout]:
    def bad(field: str, reason: str) -> DataError:
        return DataError(reason, source=str(file), row=i, field=field)

    uid = row["prompt_uid"]
    if not isinstance(uid, str) or not uid:
        raise bad("prompt_uid", f"{uid!r}: must be a non-empty string")
    prompt = prompts.get(uid)
    if prompt is None:
        raise bad("prompt_uid", f"'{uid}' is not in the training prompts (the recording is of another dataset?)")
    index = row["sample_index"]
    if not _is_int(index) or index < 0:
        raise bad("sample_index", f"{index!r}: must be an integer >= 0")
    prompt_ids = _int_list(row["prompt_token_ids"], bad, "prompt_token_ids")
    if not prompt_ids:
        raise bad("prompt_token_ids", "empty")
    response_ids = _int_list(row["response_token_ids"], bad, "response_token_ids")
    logprobs = row["behaviour_logprobs"]
    if not isinstance(logprobs, list) or not all(_is_finite(x) for x in logprobs):
        raise bad("behaviour_logprobs", "must be a list of finite numbers")
    if len(logprobs) != len(response_ids):
        raise bad("behaviour_logprobs", f"{len(logprobs)} values for {len(response_ids)} response tokens")
    if not isinstance(row["response_text"], str):
        raise bad("response_text", f"{row['response_text']!r}: must be a string")
    if row["finish_reason"] not in FINISH_REASONS:
        raise bad("finish_reason", f"{row['finish_reason']!r}: must be one of {', '.join(FINISH_REASONS)}")
    version = row["policy_version"]
    if not _is_int(version) or version < 0:
        raise bad("policy_version", f"{version!r}: must be an integer >= 0")
    hashes = [m.sha256 for m in prompt.images]
    if row["image_hashes"] != hashes:
        raise bad("image_hashes", f"{row['image_hashes']} differ from the training prompt's images {hashes} "
                  "(a different dataset, or different model.min_pixels/max_pixels?)")
    if row["answer"] != prompt.answer:
        raise bad("answer", f"{row['answer']!r} differs from the training prompt's answer {prompt.answer!r}")
    rollout = Rollout(prompt_ids, response_ids, row["response_text"], [float(x) for x in logprobs],
                      row["finish_reason"], version)
    return prompt, rollout


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int_list(value: Any, bad, field: str) -> list[int]:
    if not isinstance(value, list) or not all(_is_int(x) and x >= 0 for x in value):
        raise bad(field, "must be a list of token ids (integers >= 0)")
    return list(value)

