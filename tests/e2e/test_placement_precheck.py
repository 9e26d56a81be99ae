"""A cluster that can never host the roles fails with one line before any placement group is
reserved, so never after the 300 s placement wait: a real Ray head with 1 CPU (`ray start --head
--num-cpus=1` on 127.0.0.1, free ports, its own temp dir), the default roles needing 2.

Stopped by killing what this test started (processes naming its temp dir), never `ray stop`.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_head import head_env, private_head

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
EXPECTED = ("rlsys: the cluster cannot host the roles: needs 2 CPU, cluster has 1 CPU: "
            "engine 0.5 CPU, learner 1 CPU, reward 0.5 CPU")


WAIT_ENV = "RLSYS_WAIT_FOR_RESOURCES"


def _env() -> dict:
    env = head_env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop(WAIT_ENV, None)
    return env


@pytest.fixture(scope="module")
def one_cpu_head():
    with private_head(num_cpus=1, prefix="rlsys-pc-") as head:
        yield head.address


def _ever_started(address: str) -> tuple[int, int]:
    """(placement groups, actors) the head has ever had, removed and dead ones included."""
    code = f"""
import ray
import ray._private.state
ray.init(address="{address}", _node_ip_address="127.0.0.1", log_to_driver=False)
# The GCS actor table (dead actors included) rather than the state API: that one goes through
# the dashboard, which failed to answer under load in a full test run.
print("EVER", len(ray.util.placement_group_table()), len(ray._private.state.actors()))
"""
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("EVER ")]
    assert len(lines) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    _, groups, actors = lines[0].split()
    return int(groups), int(actors)


def test_check_placement_fails_at_once_against_a_real_one_cpu_cluster(one_cpu_head):
    """In-process: connected to the head, the pre-check raises before any placement group."""
    code = f"""
import ray
from rlsys.config import load_config
from rlsys.distributed import placement
ray.init(address="{one_cpu_head}", _node_ip_address="127.0.0.1", log_to_driver=False)
plan = placement.plan_roles(load_config(None, []), needs_reference=False)
reserve, reserved = placement._reserve, []
placement._reserve = lambda *args: reserved.append(args) or reserve(*args)  # the wait happens in there
try:
    placement.create_placement_group(plan, colocate=True)
except placement.PlacementError as err:
    print("ERR", err)
print("RESERVED", len(reserved))
print("PGS", len(ray.util.placement_group_table()))
"""
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.split(" ")[0] in ("ERR", "RESERVED", "PGS"))
    assert "ERR" in out, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rlsys: " + out["ERR"].split(" (")[0] == EXPECTED
    assert out["RESERVED"] == "0" and out["PGS"] == "0"  # refused before any reservation (and its wait)


def test_train_exits_2_with_one_line_before_any_role_starts(one_cpu_head, tmp_path, tiny_model_dir, task_data):
    """`python -m launch.train resources.address=<head>`: exit code 2, the one line, and the head
    never got a placement group or an actor (so no placement wait was ever entered)."""
    train, test = task_data
    cmd = [sys.executable, "-m", "launch.train", f"resources.address={one_cpu_head}", f"model.path={tiny_model_dir}",
           f"data.train={train}", f"data.test={test}", f"output_dir={tmp_path}", "logging.wandb=disabled",
           "logging.progress_bar=false", "reward.components=[{name: accuracy, weight: 1.0}]"]
    proc = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rlsys: ")]
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith(EXPECTED + " ("), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert _ever_started(one_cpu_head) == (0, 0)
    print(f"exit 2: {errors[0]}")
