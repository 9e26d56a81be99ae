"""The README's local `ray job submit` block, run verbatim as a newcomer would after the install.

The block (the fenced one with the `readme-e2e:` marker) runs in `bash -e` from the checkout, in a
shell whose PATH does not hold the venv (so `source .venv/bin/activate` has to do its job) and in a
network namespace of its own (`unshare --net`), so the README's fixed ports (GCS 6379, dashboard
8265, agent 52365, ...) cannot meet another Ray of this machine. Isolation is by environment only:
RAY_TMPDIR (the head's session directory) and RLSYS_JOB_BASE_DIR (where a job's relative
output_dir goes) point into this test's temp dir. Nothing is appended to the commands.

Then the job must have SUCCEEDED, its run directory must be an absolute path outside the Ray
session directory, and its metrics and checkpoint must still be there after the head is stopped
and its session directory deleted. The head is stopped by killing what this test started
(processes whose command line names this test's RAY_TMPDIR), never by a machine-wide `ray stop`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ray_head import kill_started

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
MARKER = "# readme-e2e:"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PROBE = """
import json, sys
from ray.job_submission import JobSubmissionClient
client = JobSubmissionClient("http://127.0.0.1:8265")
jobs = [{"id": j.submission_id, "status": str(j.status.value), "logs": client.get_job_logs(j.submission_id)}
        for j in client.list_jobs() if j.submission_id]
json.dump(jobs, open(sys.argv[1], "w"))
"""


def readme_block() -> str:
    """The body of the one fenced bash block of README.md that holds the marker."""
    blocks = re.findall(r"^```bash\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    found = [b for b in blocks if MARKER in b]
    assert len(found) == 1, f"README.md: {len(found)} bash blocks with the marker {MARKER!r}"
    return found[0]


def test_readme_block_is_extracted():
    block = readme_block()
    assert "ray start --head" in block and "ray job submit" in block and "source .venv/bin/activate" in block


def _netns() -> list[str] | None:
    """The prefix that runs a command in a fresh network namespace with loopback up, or None."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        return None
    probe = subprocess.run(["unshare", "--net", "--map-root-user", "sh", "-c", "ip link set lo up"],
                           capture_output=True, timeout=30)
    return ["unshare", "--net", "--map-root-user"] if probe.returncode == 0 else None


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _fresh_shell_env(tmp: Path) -> dict:
    """A login-like environment: no venv on PATH, no Ray / Python variables of this process;
    only the session dir and the jobs' base dir moved into `tmp`."""
    venv_bin = str(ROOT / ".venv" / "bin")
    path = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
            if p and Path(p).resolve() != Path(venv_bin).resolve() and p != str(Path(sys.executable).parent)]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "VIRTUAL_ENV", "PYTHON", "CONDA"))}
    env.update(PATH=os.pathsep.join(path), RAY_TMPDIR=str(tmp / "raytmp"), RLSYS_JOB_BASE_DIR=str(tmp / "jobs"))
    (tmp / "raytmp").mkdir()
    return env


def test_readme_ray_job_submit_runs_verbatim():
    netns = _netns()
    if netns is None and not all(_port_free(p) for p in (6379, 8265, 52365, 10001)):
        pytest.skip("no network namespace (unshare --net) and Ray's default ports are taken here")
    # Short: Ray's unix socket paths under the session dir must stay under 108 characters.
    tmp = Path(tempfile.mkdtemp(prefix="rlsys-readme-", dir="/tmp"))
    env = _fresh_shell_env(tmp)
    (tmp / "block.sh").write_text(readme_block())
    (tmp / "probe.py").write_text(PROBE)
    # The harness around the block (not part of it): loopback up in the namespace, the block in
    # `bash -e`, then the job list read inside the same namespace.
    (tmp / "harness.sh").write_text(
        "ip link set lo up 2>/dev/null || true\n"
        f"cd {ROOT}\n"
        f"rc=0; bash -e {tmp / 'block.sh'} > {tmp / 'block.log'} 2>&1 || rc=$?\n"
        f"{VENV_PYTHON} {tmp / 'probe.py'} {tmp / 'jobs.json'} || true\n"
        "exit $rc\n")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([*(netns or []), "bash", str(tmp / "harness.sh")], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=1500)
        elapsed = time.perf_counter() - t0
        log = (tmp / "block.log").read_text() if (tmp / "block.log").exists() else ""
        assert proc.returncode == 0, f"README block failed (rc {proc.returncode}):\n{log[-6000:]}{proc.stderr[-2000:]}"
        jobs = json.loads((tmp / "jobs.json").read_text())
        assert [j["status"] for j in jobs] == ["SUCCEEDED"], [(j["id"], j["status"], j["logs"][-3000:]) for j in jobs]
        logs = jobs[0]["logs"]
        (run_line,) = [line for line in logs.splitlines() if line.startswith("[rlsys] run dir ")]
        run_dir = Path(run_line[len("[rlsys] run dir "):].split(";")[0])
        assert run_dir.is_absolute() and run_dir.parent == (tmp / "jobs" / "runs").resolve(), run_line
        assert "raytmp" not in str(run_dir) and "runtime_resources" not in str(run_dir)
        assert "[rlsys] in a Ray job package: output_dir 'runs' ->" in logs
    finally:
        kill_started(str(tmp / "raytmp"))
        time.sleep(2)
        kill_started(str(tmp / "raytmp"))
        shutil.rmtree(tmp / "raytmp", ignore_errors=True)  # the Ray session goes, as `ray stop` + reboot would
    # After the head is gone and its session deleted, the run is still there.
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward/mean" in r] == [1, 2]
    assert (run_dir / "checkpoints" / "final").is_dir() and any((run_dir / "checkpoints" / "final").iterdir())
    assert (run_dir / "summary.json").is_file()
    print(f"README block: {elapsed:.0f} s")
    shutil.rmtree(tmp, ignore_errors=True)
