"""`rlsys ablate`: the summariser on run directories written the way `Driver.run` writes them
(MetricsLogger rows, RunSummary JSON, config.yaml), the arm planning, and the command line."""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from launch.ablate import ARMS, DEFAULT_EVAL_EVERY, arm_config, arm_overrides, plan
from rlsys.ablation import load_arm, summarize
from rlsys.config import load_config, to_yaml
from rlsys.driver import RunSummary
from rlsys.evaluation import EvalResult
from rlsys.logging import MetricsLogger, flatten

ROOT = Path(__file__).resolve().parents[2]


def _eval(acc: float) -> EvalResult:
    return EvalResult(accuracy=acc, format_rate=1.0, n=128, response_length_mean=20.0)


def _write_run(root: Path, arm: str, step_seconds: list[float], generated: int, replayed: int,
               mid_evals: dict[int, float], before: float, after: float, loop_seconds: float) -> Path:
    """A finished run directory, in Driver.run's order: eval-before row (step 0), one row per step
    (eval/* merged into the rows `eval.every` hits), eval-after row (last step), summary.json."""
    run_dir = root / f"{arm}-20260101-000000"
    run_dir.mkdir(parents=True)
    cfg = load_config(arm_config(arm), ["logging.wandb=disabled", "logging.progress_bar=false",
                                        "logging.plot=false", "eval.every=2"])
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    logger = MetricsLogger(cfg, run_dir, len(step_seconds))
    logger.log(0, flatten("eval", _eval(before)))
    for step, seconds in enumerate(step_seconds, start=1):
        row = {"time/step": seconds, "time/generate": seconds / 3, "sampling/generated_groups": float(generated),
               "sampling/replayed_groups": float(replayed), "reward/accuracy": 0.5,
               "learner/kl": math.nan}  # a non-finite metric: the logger writes it as null
        if step in mid_evals:
            row.update(flatten("eval", _eval(mid_evals[step])))
        logger.log(step, row)
    logger.log(len(step_seconds), flatten("eval", _eval(after)))
    logger.close()
    summary = RunSummary(str(run_dir), len(step_seconds), _eval(before), _eval(after), loop_seconds)
    (run_dir / "summary.json").write_text(json.dumps(dataclasses.asdict(summary), indent=2))
    return run_dir


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    return [
        _write_run(root, "online", [2.0, 3.0, 2.5, 4.5], 16, 0, {2: 0.6}, 0.5, 0.75, 30.0),
        _write_run(root, "offline", [1.0, 1.0, 1.5, 1.5], 0, 16, {2: 0.5}, 0.5, 0.55, 12.5),
        _write_run(root, "mixed", [1.5, 2.5, 2.0, 2.0], 8, 8, {2: 0.625}, 0.5, 0.875, 20.0),
    ]


def _table_rows(text: str) -> dict[str, list[str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| arm")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return {row[0]: row[1:] for row in cells}


def test_table_numbers_match_hand_computation(runs, tmp_path):
    table, _ = summarize(runs, tmp_path / "out", command="rlsys ablate total_steps=4")
    rows = _table_rows(table.read_text())
    # before, after, gain, steps, loop s, mean step s (sum/4), generated (4 x per step), replayed
    assert rows["online"] == ["0.500", "0.750", "+0.250", "4", "30.0", "3.00", "64", "0"]
    assert rows["offline"] == ["0.500", "0.550", "+0.050", "4", "12.5", "1.25", "0", "64"]
    assert rows["mixed"] == ["0.500", "0.875", "+0.375", "4", "20.0", "2.00", "32", "32"]
    assert list(rows) == ["online", "offline", "mixed"]  # the order given
    assert "Command: `rlsys ablate total_steps=4`" in table.read_text()


def test_curve_has_every_eval_at_its_step_and_training_seconds(runs):
    online = load_arm(runs[0])
    # before (step 0, no training yet), step 2 (2.0 + 3.0 s), after (all four steps: 12.0 s)
    assert [(p.step, p.train_seconds, p.accuracy) for p in online.curve] == [
        (0, 0.0, 0.5), (2, 5.0, 0.6), (4, 12.0, 0.75)]
    assert load_arm(runs[1]).curve[-1].train_seconds == pytest.approx(5.0)


def test_plot_is_a_non_empty_png(runs, tmp_path):
    _, png = summarize(runs, tmp_path / "out")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as img:
        img.verify()
    with Image.open(png) as img:
        assert img.format == "PNG" and img.width > 400 and img.height > 200
        lo, hi = img.convert("L").getextrema()
        assert hi - lo > 100  # something is drawn on the white canvas


def _python(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_summarize_command_rebuilds_table_and_plot_without_training(runs, tmp_path):
    out = _python("-m", "launch.ablate", "--summarize", *map(str, runs), "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out" / "table.md").is_file() and (tmp_path / "out" / "accuracy.png").stat().st_size > 0
    assert "| online | 0.500 | 0.750 | +0.250 |" in out.stdout


def test_summarize_names_the_missing_file_in_one_line(runs, tmp_path):
    (runs[1] / "summary.json").unlink()
    out = _python("-m", "launch.ablate", "--summarize", *map(str, runs), "--out", str(tmp_path / "out"))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and str(runs[1] / "summary.json") in lines[0]


def test_plan_applies_overrides_to_every_arm_and_defaults_eval_every():
    runs_root, configs = plan(["total_steps=10", "rollout.n=4"])
    assert list(configs) == list(ARMS)
    assert [c.sampling.mode for c in configs.values()] == ["online", "offline", "mixed"]
    for cfg in configs.values():
        assert cfg.total_steps == 10 and cfg.rollout.n == 4 and cfg.eval.every == DEFAULT_EVAL_EVERY
        assert Path(cfg.output_dir) == runs_root and runs_root.name.startswith("ablation-")
    assert not runs_root.exists()  # planning creates nothing
    _, configs = plan(["eval.every=3"])
    assert {c.eval.every for c in configs.values()} == {3}  # the user's eval.every wins


def test_replaying_arms_replay_the_online_run(tmp_path):
    online_dir = tmp_path / "online-x"
    cfg = load_config(arm_config("offline"), arm_overrides(["total_steps=2"], tmp_path, online_dir))
    assert cfg.sampling.offline_path == str(online_dir) and cfg.output_dir == str(tmp_path)


def _cli(*args):
    return _python("-m", "launch.cli", *args)


def test_cli_ablate_help():
    out = _cli("ablate", "--help")
    assert out.returncode == 0, out.stderr
    assert "--out" in out.stdout and "--summarize" in out.stdout and "overrides" in out.stdout


@pytest.mark.parametrize("override, field", [
    ("rollout.n=-1", "rollout.n"), ("nosuch.key=1", "nosuch"), ("total_steps=0", "total_steps"),
    ("sampling.mode=offline", "sampling.mode"), ("sampling.offline_path=/x", "sampling.offline_path"),
    ("name=foo", "name"), ("sampling.offline_fraction=0.3", "sampling.offline_fraction"),
])
def test_cli_ablate_bad_override_exits_2_with_one_line(override, field):
    out = _cli("ablate", override)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlsys: config error: ") and field in lines[0]
    assert "Traceback" not in out.stderr and out.stdout == ""  # stopped before any arm started
