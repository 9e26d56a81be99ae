"""`rlsys train` with a reward whose signature no form accepts: refused before anything starts
(exit 2, one line on stderr naming the function; Ray, vLLM and DeepSpeed never imported, no run
directory), run as a user runs it: `launch.cli` as `__main__` in a subprocess, the reward a
relative 'bad.py:fn' in its cwd."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlsys.rewards.forms import ACCEPTED

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


# Runs `python -m launch.cli` and, at exit, prints which of the heavy stacks it had imported.
_CLI = ("import atexit, runpy, sys\n"
        "atexit.register(lambda: print('IMPORTED', sorted(m for m in ('ray', 'vllm', 'deepspeed') if m in sys.modules)))\n"
        "sys.argv = ['rlsys', *sys.argv[1:]]\n"
        "runpy.run_module('launch.cli', run_name='__main__')\n")


def _train(cwd: Path, spec: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", _CLI, "train", f"reward.components=[{{name: '{spec}', weight: 1.0}}]",
                           f"output_dir={cwd / 'runs'}"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_wrong_signature_stops_train_before_anything_starts_with_one_line(tmp_path):
    # TRL's parameter is `completions`; `completion` matches no form.
    (tmp_path / "bad.py").write_text("def fn(completion, **kwargs):\n    return [1.0 for _ in completion]\n")
    out = _train(tmp_path, "bad.py:fn")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.splitlines() == [
        f"rlsys: reward 'bad.py:fn': cannot call fn(completion, **kwargs): accepted signatures are {ACCEPTED}"]
    # Refused before Ray, an engine or a learner could start: none of them was even imported.
    assert out.stdout.splitlines()[-1] == "IMPORTED []", out.stdout[-2000:]
    assert not (tmp_path / "runs").exists()  # no run directory: nothing started


def test_a_good_trl_reward_passes_the_check(tmp_path):
    # The check `rlsys train` runs first, on the same config and a relative spec, accepts TRL's
    # `completions` (a full launch past it would build assets and start Ray: other tests do that).
    (tmp_path / "good.py").write_text("def fn(completions, **kwargs):\n    return [1.0 for _ in completions]\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    code = ("import sys; from rlsys.config import load_config; from rlsys.rewards import check_reward_forms; "
            "cfg = load_config(None, [\"reward.components=[{name: 'good.py:fn', weight: 1.0}]\"]); "
            "print(check_reward_forms([(c.name, c.weight) for c in cfg.reward.components]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "{'good.py:fn': 'trl'}"
