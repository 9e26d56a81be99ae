"""What `ray job submit` needs, without Ray: a job's relative output_dir lands outside Ray's
temporary working-dir package (launch/outputs.py), the default roles fit a 2-CPU head, and a
cluster that can never host the roles is named in one line (rlsys/distributed/placement.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from launch.outputs import DEFAULT_JOB_BASE, JOB_BASE_ENV, job_note, job_package, resolve_output_path
from rlsys.config import ConfigError, load_config
from rlsys.distributed.placement import plan_roles, unmet_placement


def _package(tmp_path: Path) -> Path:
    pkg = tmp_path / "ray" / "session_2026-12-01_12-00-00_000000_1" / "runtime_resources" / \
        "working_dir_files" / "_ray_pkg_0123abcd"
    pkg.mkdir(parents=True)
    return pkg


def test_job_package_is_detected_by_the_session_runtime_resources_path(tmp_path):
    pkg = _package(tmp_path)
    assert job_package(pkg) == pkg.parents[1]
    assert job_package(pkg / "sub") == pkg.parents[1]
    assert job_package(tmp_path) is None
    (tmp_path / "runtime_resources").mkdir()  # a folder of that name outside a session is not one
    assert job_package(tmp_path / "runtime_resources") is None


def test_relative_output_dir_outside_a_job_is_relative_to_the_current_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_output_path("runs") == tmp_path.resolve() / "runs"
    assert resolve_output_path(tmp_path / "abs") == tmp_path.resolve() / "abs"
    assert job_note("runs") == ""


def test_relative_output_dir_in_a_job_package_goes_to_the_job_base_dir(tmp_path, monkeypatch):
    pkg = _package(tmp_path)
    monkeypatch.chdir(pkg)
    base = tmp_path / "jobs"
    monkeypatch.setenv(JOB_BASE_ENV, str(base))
    assert resolve_output_path("runs") == base.resolve() / "runs"
    assert resolve_output_path("runs/default-1") == base.resolve() / "runs" / "default-1"
    assert resolve_output_path(tmp_path / "abs") == tmp_path.resolve() / "abs"  # absolute: as given
    assert str(base.resolve() / "runs") in job_note("runs") and JOB_BASE_ENV in job_note("runs")
    monkeypatch.delenv(JOB_BASE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_output_path("runs") == Path(DEFAULT_JOB_BASE).expanduser().resolve() / "runs"
    assert str(resolve_output_path("runs")).startswith(str(tmp_path / "home"))


@pytest.mark.parametrize("base", ["relative/dir", "{pkg}/inside"])
def test_a_job_base_dir_that_would_not_outlive_the_session_is_refused(tmp_path, monkeypatch, base):
    pkg = _package(tmp_path)
    monkeypatch.chdir(pkg)
    monkeypatch.setenv(JOB_BASE_ENV, base.format(pkg=pkg))
    with pytest.raises(ConfigError) as err:
        resolve_output_path("runs")
    assert JOB_BASE_ENV in str(err.value) and "\n" not in str(err.value)


def test_the_training_command_refuses_a_bad_job_base_dir_with_exit_2(tmp_path, monkeypatch, capsys):
    from launch.train import main

    monkeypatch.chdir(_package(tmp_path))
    monkeypatch.setenv(JOB_BASE_ENV, "not/absolute")
    assert main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlsys: config error: output_dir: RLSYS_JOB_BASE_DIR"), err


def test_default_roles_fit_the_two_cpus_of_ray_start_head():
    cfg = load_config(None, [])
    plan = plan_roles(cfg, needs_reference=False)
    assert sum(b.get("CPU", 0) for b in plan.bundles) == 2
    assert unmet_placement(plan, [{"CPU": 2.0, "memory": 1e9}]) is None


def test_unmet_placement_names_the_missing_resources_and_each_role():
    cfg = load_config(None, ["resources.cpus_per_engine=1"])
    plan = plan_roles(cfg, needs_reference=False)
    assert unmet_placement(plan, [{"CPU": 2.0}]) == (
        "the cluster cannot host the roles: needs 2.5 CPU, cluster has 2 CPU: "
        "engine 1 CPU, learner 1 CPU, reward 0.5 CPU")
    cfg = load_config(None, ["rollout.num_engines=2", "resources.gpus_per_engine=1"])
    msg = unmet_placement(plan_roles(cfg, needs_reference=False), [{"CPU": 8.0, "GPU": 1.0}])
    assert msg == "the cluster cannot host the roles: needs 2 GPU, cluster has 1 GPU: 2 engines 2 GPU"
    # Enough in total, but no node holds one bundle.
    cfg = load_config(None, ["resources.cpus_per_learner=2"])
    msg = unmet_placement(plan_roles(cfg, needs_reference=False), [{"CPU": 1.5}, {"CPU": 1.5}])
    assert msg == ("the cluster cannot host the roles: one learner needs 2 CPU on one node, "
                   "the largest node has 1.5 CPU")


def test_unmet_placement_trusts_an_autoscalers_maximum():
    cfg = load_config(None, ["resources.cpus_per_engine=1"])
    plan = plan_roles(cfg, needs_reference=False)
    assert unmet_placement(plan, [{"CPU": 1.0}], autoscaler_max={"CPU": 64.0}) is None
    assert unmet_placement(plan, [{"CPU": 1.0}], autoscaler_max={"CPU": 2.0}) == (
        "the cluster cannot host the roles: needs 2.5 CPU, the autoscaler's maximum is 2 CPU: "
        "engine 1 CPU, learner 1 CPU, reward 0.5 CPU")
