"""The run state: what a checkpoint holds, how it is written and read, which one is the latest,
and whether a directory is a usable checkpoint — checked before any actor starts.

A checkpoint directory holds
  run_state.json   the driver's state (`RunState`): step, policy version, sampler positions,
                   the config it was written with;
  learner/         the policy's DeepSpeed state (weights, optimizer, train-step counter, RNG);
  critic/          the critic's, when the run has one;
  inflight.pkl     with sampling.max_staleness > 0, the batches already generated (and scored)
                   for the next steps, which older weights produced: they are part of the state.
It is written under `<name>.partial` and renamed into place when every part is there, so a
crash mid-save leaves a `.partial` directory that is never mistaken for a checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

STATE_FILE = "run_state.json"
INFLIGHT_FILE = "inflight.pkl"
FORMAT = 1
_PARTIAL = ".partial"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(ValueError):
    """A missing, partial or corrupt checkpoint; the message is one line naming the path."""


@dataclass
class RunState:
    """What the driver needs to continue exactly where a checkpoint was taken.

    step:            training steps completed.
    version:         policy version the learner's weights carry (the engines get it on load).
    sampler:         prompt sampler position, {"epoch": int, "position": int}.
    replay_sampler:  the offline replay sampler's position, or None (online runs).
    eval_before:     the held-out evaluation before training (an EvalResult as a dict), or None.
    config:          the RunConfig as a dict, for the record (a resumed run uses its own).
    """

    step: int
    version: int
    sampler: dict
    replay_sampler: Optional[dict]
    eval_before: Optional[dict]
    config: dict


def checkpoint_parts(has_critic: bool) -> list[str]:
    """Subdirectories a complete checkpoint holds besides the state file."""
    return ["learner"] + (["critic"] if has_critic else [])


# A batch in flight: (replayed, generated) scored groups, in the batch's slot order.
InFlight = tuple[list, list]


def save(path: Path, state: RunState, save_roles: Callable[[Path], None], inflight: Sequence[InFlight] = ()) -> Path:
    """Write `state`, the roles' parts (`save_roles(directory)` writes learner/ and critic/) and
    the batches in flight into `path`, atomically: everything goes to `path.partial`, which is
    renamed at the end. Prompts are stored by uid only (their images live in the dataset)."""
    path = Path(path)
    tmp = path.with_name(path.name + _PARTIAL)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_roles(tmp)
    if inflight:
        stripped = [tuple([_without_prompt(sg) for sg in part] for part in batch) for batch in inflight]
        (tmp / INFLIGHT_FILE).write_bytes(pickle.dumps(stripped))
    (tmp / STATE_FILE).write_text(json.dumps({"format": FORMAT, **dataclasses.asdict(state)}, indent=2))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def load_state(path: Path) -> RunState:
    """The RunState of a checkpoint directory; CheckpointError when it is unreadable."""
    file = Path(path) / STATE_FILE
    try:
        raw: Any = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a checkpoint ({STATE_FILE} missing)") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{file}: unreadable ({err})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{file}: not an rlsys checkpoint of format {FORMAT}")
    fields = {f.name for f in dataclasses.fields(RunState)}
    missing = sorted(fields - raw.keys())
    if missing:
        raise CheckpointError(f"{file}: corrupt (missing {', '.join(missing)})")
    return RunState(**{k: raw[k] for k in fields})


def _without_prompt(sg):
    from rlsys.protocol import Prompt

    group = dataclasses.replace(sg.group, prompt=Prompt(sg.group.prompt.uid, []))
    return dataclasses.replace(sg, group=group)


def load_inflight(path: Path, prompts: Mapping[str, Any]) -> list[InFlight]:
    """The batches a checkpoint carried in flight, each group joined back to its prompt (by uid)."""
    file = Path(path) / INFLIGHT_FILE
    if not file.is_file():
        return []
    try:
        batches = pickle.loads(file.read_bytes())
        return [tuple([dataclasses.replace(sg, group=dataclasses.replace(sg.group, prompt=prompts[sg.group.prompt.uid]))
                       for sg in part] for part in batch) for batch in batches]
    except KeyError as err:
        raise CheckpointError(f"{file}: prompt {err} of a batch in flight is not in this run's training data") from None
    except Exception as err:
        raise CheckpointError(f"{file}: unreadable ({err!r})") from None


def validate(path: str | Path, has_critic: bool) -> RunState:
    """Everything a resume will read is there and readable; -> its RunState. Cheap (no model
    is loaded), so it runs before Ray or any actor starts."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if path.name.endswith(_PARTIAL):
        raise CheckpointError(f"{path}: a partial checkpoint (its save did not finish)")
    state = load_state(path)
    for part in checkpoint_parts(has_critic):
        # DeepSpeed writes a `latest` file naming its tag, then the tag's directory.
        latest = path / part / "latest"
        tag = latest.read_text().strip() if latest.is_file() else None
        if not tag or not any((path / part / tag).glob("*")):
            raise CheckpointError(f"{path}: incomplete checkpoint ({part}/ has no saved state)")
    return state


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete periodic checkpoints of a run directory, oldest first."""
    found = []
    for child in (Path(run_dir) / "checkpoints").glob("step_*"):
        m = _STEP_DIR.match(child.name)
        if m and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest(run_dir: Path) -> Optional[Path]:
    """The checkpoint of a run directory with the most steps behind it (the final one if the
    run finished), or None."""
    candidates = step_checkpoints(run_dir)
    final = Path(run_dir) / "checkpoints" / "final"
    if (final / STATE_FILE).is_file():
        candidates.append((load_state(final).step, final))
    return max(candidates, key=lambda c: c[0])[1] if candidates else None


def prune(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` periodic checkpoints (0 keeps all); -> removed."""
    if keep_last <= 0:
        return []
    old = step_checkpoints(run_dir)[:-keep_last]
    for _, path in old:
        shutil.rmtree(path)
    return [p for _, p in old]
