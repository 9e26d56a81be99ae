"""Where a run's files go: `output_dir` (and a relative `--resume RUN_DIR`) as an absolute path that
outlives the process that wrote it.

Outside a Ray job a relative path is relative to the current directory (`runs/` of the checkout).
A job submitted with `ray job submit --working-dir DIR` runs in Ray's temporary copy of DIR,
`<session dir>/runtime_resources/working_dir_files/_ray_pkg_<hash>`, which is deleted with the Ray
session; a run directory there would be lost with its checkpoints. So inside such a package a
relative path is resolved against `$RLSYS_JOB_BASE_DIR` (an absolute directory; default
`~/rlsys-jobs` of the user the head runs as): `output_dir=runs` -> `~/rlsys-jobs/runs/<name>-<time>`.
An absolute `output_dir` is used as it is, inside a job or not.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from rlsys.config import ConfigError

JOB_BASE_ENV = "RLSYS_JOB_BASE_DIR"
DEFAULT_JOB_BASE = "~/rlsys-jobs"


def job_package(cwd: Optional[os.PathLike] = None) -> Optional[Path]:
    """The Ray session's runtime-resources directory when `cwd` (default: the current directory)
    lies inside it (a job's or an actor's working-dir package), else None."""
    path = Path(cwd if cwd is not None else os.getcwd()).resolve()
    parts = path.parts
    for i in range(1, len(parts)):
        if parts[i] == "runtime_resources" and parts[i - 1].startswith("session_"):
            return Path(*parts[: i + 1])
    return None


def job_base_dir() -> Path:
    """The absolute directory relative paths resolve against inside a job package."""
    raw = os.environ.get(JOB_BASE_ENV) or DEFAULT_JOB_BASE
    base = Path(raw).expanduser()
    if not base.is_absolute():
        raise ConfigError(f"{JOB_BASE_ENV} = {raw}: must be an absolute directory (relative paths of a "
                          "Ray job resolve against it, not against the job's temporary working dir)")
    if job_package(base) is not None:
        raise ConfigError(f"{JOB_BASE_ENV} = {raw}: inside Ray's session directory, which is deleted with "
                          "the session; name a directory outside it")
    return base.resolve()


def resolve_output_path(path: str | os.PathLike) -> Path:
    """`path` made absolute: as it is when absolute (after `~`), against the current directory
    outside a Ray job package, against `job_base_dir()` inside one."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p.resolve()
    if job_package() is not None:
        return (job_base_dir() / p).resolve()
    return p.resolve()


def job_note(output_dir: str) -> str:
    """A one-line note when a relative `output_dir` was moved out of a job package, else ''."""
    if Path(output_dir).expanduser().is_absolute() or job_package() is None:
        return ""
    return (f"[rlsys] in a Ray job package: output_dir '{output_dir}' -> {resolve_output_path(output_dir)} "
            f"(relative to ${JOB_BASE_ENV}, default {DEFAULT_JOB_BASE})")
