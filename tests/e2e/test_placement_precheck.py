"""A cluster that can never host the roles fails in seconds with one line, not after the 300 s
placement wait: a real Ray head with 1 CPU (`ray start --head --num-cpus=1` on 127.0.0.1, free
ports, its own temp dir), the default roles needing 2.

Stopped by killing what this test started (processes naming its temp dir), never `ray stop`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
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


def test_check_placement_fails_at_once_against_a_real_one_cpu_cluster(one_cpu_head):
    """In-process: connected to the head, the pre-check raises before any placement group."""
    code = f"""
import time, ray
from rlsys.config import load_config
from rlsys.distributed.placement import PlacementError, create_placement_group, plan_roles
ray.init(address="{one_cpu_head}", _node_ip_address="127.0.0.1", log_to_driver=False)
plan = plan_roles(load_config(None, []), needs_reference=False)
t0 = time.perf_counter()
try:
    create_placement_group(plan, colocate=True)
except PlacementError as err:
    print("ERR", err)
print("ELAPSED", time.perf_counter() - t0)
print("PGS", len(ray.util.placement_group_table()))
"""
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.split(" ")[0] in ("ERR", "ELAPSED", "PGS"))
    assert "ERR" in out, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rlsys: " + out["ERR"].split(" (")[0] == EXPECTED
    assert float(out["ELAPSED"]) < 5 and out["PGS"] == "0"


def test_train_exits_2_with_one_line_within_30_s(one_cpu_head, tmp_path, tiny_model_dir, task_data):
    """`python -m launch.train resources.address=<head>`: exit code 2, the one line, well under 300 s.
    The run is small, so the time is start-up (imports, data, reward probe) plus the check."""
    train, test = task_data
    cmd = [sys.executable, "-m", "launch.train", f"resources.address={one_cpu_head}", f"model.path={tiny_model_dir}",
           f"data.train={train}", f"data.test={test}", f"output_dir={tmp_path}", "logging.wandb=disabled",
           "logging.progress_bar=false", "reward.components=[{name: accuracy, weight: 1.0}]"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - t0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rlsys: ")]
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith(EXPECTED + " ("), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert elapsed < 30, f"{elapsed:.1f} s"
    print(f"exit 2 after {elapsed:.1f} s: {errors[0]}")
