"""A private Ray head for the e2e tests: every listener on 127.0.0.1 and on a free port (not
Ray's fixed defaults, which a Ray already running on the machine may hold: then the job agent
never comes up), its own temp dir, and stopped by killing what it started (processes whose
command line names that temp dir), never by a machine-wide `ray stop`.
(Imported as `from ray_head import ...`: pytest puts tests/ on sys.path.)"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def head_env() -> dict:
    """This environment with the venv first on PATH and Ray's listeners kept on loopback."""
    env = dict(os.environ)
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


def kill_started(marker: str) -> None:
    """SIGKILL every process whose command line names `marker` (a head's temp dir) or whose
    RAY_TMPDIR lies under it."""
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            cmd, env = " ".join(proc.info["cmdline"] or []), proc.info["environ"] or {}
            if proc.pid != os.getpid() and (marker in cmd or env.get("RAY_TMPDIR", "").startswith(marker)):
                proc.send_signal(signal.SIGKILL)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


@dataclass
class Head:
    address: str  # GCS, for resources.address / ray.init
    dashboard: str  # http://127.0.0.1:<port>, for `ray job submit --address`
    temp_dir: str


@contextmanager
def private_head(num_cpus: int, prefix: str = "rlsys-e2e-"):
    temp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    port, dash = free_port(), free_port()
    ports = [f"--{flag}={free_port()}" for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "ray-client-server-port")]
    cmd = [str(BIN / "ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", *ports,
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
           f"--num-cpus={num_cpus}", "--num-gpus=0", f"--temp-dir={temp}", "--disable-usage-stats"]
    subprocess.run(cmd, check=True, env=head_env(), capture_output=True, timeout=180)
    try:
        yield Head(f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", temp)
    finally:
        kill_started(temp)
        shutil.rmtree(temp, ignore_errors=True)
