"""Summarising a sampling ablation (online / offline / mixed) from finished run directories.

Pure file reading and plotting: no Ray, no model. Reads what `rlsys train` writes into a run
directory (rlsys/driver.py `Driver.run`, rlsys/logging.py `MetricsLogger`):

- `summary.json`: `steps`, `seconds` (the driver loop: evaluations, steps, final checkpoint and
  HF export), `eval_before` / `eval_after` (`{"accuracy": ..., ...}` or null);
- `metrics.jsonl`: one row per step (`step`, `time/step`, `sampling/generated_groups`,
  `sampling/replayed_groups`, ..., and `eval/accuracy` on steps evaluated with `eval.every`),
  plus eval-only rows for the evaluation before training (step 0) and after it (last step);
- `config.yaml`: the run's config; its `name` labels the arm.

The accuracy-vs-time panel's x axis is *training seconds*: the cumulative `time/step` up to the
evaluated step. Evaluation time is left out: metrics.jsonl does not record it, and every arm
evaluates the same prompts the same number of times, so leaving it out shifts no arm against
another.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

TABLE_HEADER = ("arm", "acc before", "acc after", "gain", "steps", "loop (s)", "mean step (s)",
                "generated groups", "replayed groups")


@dataclass
class CurvePoint:
    step: int
    train_seconds: float  # cumulative time/step up to and including `step`
    accuracy: float


@dataclass
class ArmResult:
    arm: str
    run_dir: Path
    acc_before: Optional[float]
    acc_after: Optional[float]
    steps: int
    loop_seconds: float
    mean_step_seconds: Optional[float]
    generated_groups: int
    replayed_groups: int
    curve: list[CurvePoint] = field(default_factory=list)

    @property
    def gain(self) -> Optional[float]:
        if self.acc_before is None or self.acc_after is None:
            return None
        return self.acc_after - self.acc_before


class AblationError(Exception):
    """A run directory that cannot be summarised (missing or malformed file); names the file."""


# ----------------------------------------------------------------------------- reading

def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl -> rows; a bad line names file and line (a half-written last line included)."""
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise AblationError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
    return rows


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise AblationError(f"{path}: missing (did the run finish?)") from None
    except json.JSONDecodeError as err:
        raise AblationError(f"{path}: not valid JSON ({err.msg})") from None


def arm_label(run_dir: Path) -> str:
    """The run's `name` from its config.yaml; the directory name when there is none."""
    import yaml

    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        name = (yaml.safe_load(cfg_path.read_text()) or {}).get("name")
        if name:
            return str(name)
    return run_dir.name


def _number(row: dict, key: str) -> Optional[float]:
    """A finite metric or None (the logger writes non-finite values as null)."""
    value = row.get(key)
    return float(value) if value is not None and math.isfinite(value) else None


def accuracy_curve(rows: list[dict]) -> list[CurvePoint]:
    """Every held-out evaluation in row order, with the training seconds spent before it.

    A step row's own `time/step` counts before its `eval/accuracy`: the driver evaluates after
    the step."""
    points, seconds = [], 0.0
    for row in rows:
        seconds += _number(row, "time/step") or 0.0
        acc = _number(row, "eval/accuracy")
        if acc is not None:
            points.append(CurvePoint(int(row["step"]), seconds, acc))
    return points


def _step_rows(rows: list[dict]) -> list[dict]:
    """Training-step rows (the eval-only rows before and after training have no time/step)."""
    return [r for r in rows if _number(r, "time/step") is not None]


def _total(rows: list[dict], key: str) -> int:
    return int(round(sum(_number(r, key) or 0.0 for r in rows)))


def _accuracy(result: Optional[dict]) -> Optional[float]:
    return None if result is None else float(result["accuracy"])


def load_arm(run_dir: Path) -> ArmResult:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AblationError(f"{run_dir}: not a directory")
    summary = _read_json(run_dir / "summary.json")
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise AblationError(f"{metrics_path}: missing (did the run finish?)")
    rows = read_metrics(metrics_path)
    steps = _step_rows(rows)
    step_seconds = [_number(r, "time/step") for r in steps]
    return ArmResult(
        arm=arm_label(run_dir), run_dir=run_dir,
        acc_before=_accuracy(summary.get("eval_before")), acc_after=_accuracy(summary.get("eval_after")),
        steps=int(summary["steps"]), loop_seconds=float(summary["seconds"]),
        mean_step_seconds=sum(step_seconds) / len(step_seconds) if step_seconds else None,
        generated_groups=_total(steps, "sampling/generated_groups"),
        replayed_groups=_total(steps, "sampling/replayed_groups"),
        curve=accuracy_curve(rows))


# ----------------------------------------------------------------------------- table

def _fmt(value: Optional[float], spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table_row(arm: ArmResult) -> list[str]:
    return [arm.arm, _fmt(arm.acc_before, ".3f"), _fmt(arm.acc_after, ".3f"), _fmt(arm.gain, "+.3f"),
            str(arm.steps), _fmt(arm.loop_seconds, ".1f"), _fmt(arm.mean_step_seconds, ".2f"),
            str(arm.generated_groups), str(arm.replayed_groups)]


def markdown_table(arms: list[ArmResult]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(table_row(a)) + " |" for a in arms]
    return "\n".join(lines) + "\n"


def _shown(path: Path) -> str:
    """Relative to the working directory when inside it, so a committed table names no home dir."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


SAMPLING_TITLE = "Sampling ablation: online / offline / mixed"


def report_markdown(arms: list[ArmResult], command: Optional[str] = None, title: str = SAMPLING_TITLE) -> str:
    """table.md: the table, what its columns mean, the run directories and (if given) the command."""
    notes = [
        f"# {title}", "",
        markdown_table(arms),
        "*acc*: held-out accuracy before and after training (greedy, `summary.json`); *gain* = after "
        "- before. *loop*: `summary.json` seconds (evaluations, steps, final checkpoint, HF export). "
        "*mean step*: mean `time/step`. *generated / replayed groups*: sums of "
        "`sampling/generated_groups` and `sampling/replayed_groups` over the steps.",
        "",
        "`accuracy.png`: held-out accuracy against step and against training seconds (cumulative "
        "`time/step`; evaluation time excluded).",
        "",
        "Runs: " + ", ".join(f"`{a.arm}`: `{_shown(a.run_dir)}`" for a in arms),
    ]
    if command:
        notes += ["", f"Command: `{command}`"]
    return "\n".join(notes) + "\n"


# ----------------------------------------------------------------------------- plot

def plot_accuracy(arms: list[ArmResult], out: Path) -> None:
    """Two panels, one line per arm: held-out accuracy vs step and vs training seconds."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(9.0, 3.6))
    for arm in arms:
        if not arm.curve:
            continue
        by_step.plot([p.step for p in arm.curve], [p.accuracy for p in arm.curve], marker="o", label=arm.arm)
        by_time.plot([p.train_seconds for p in arm.curve], [p.accuracy for p in arm.curve], marker="o",
                     label=arm.arm)
    by_step.set_xlabel("step")
    by_time.set_xlabel("training seconds (cumulative time/step, eval excluded)")
    for ax in (by_step, by_time):
        ax.set_ylabel("held-out accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def summarize(run_dirs: list[Path], out_dir: Path, command: Optional[str] = None,
              title: str = SAMPLING_TITLE) -> tuple[Path, Path]:
    """Writes `table.md` and `accuracy.png` into `out_dir`; returns their paths."""
    arms = [load_arm(Path(d)) for d in run_dirs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, png = out_dir / "table.md", out_dir / "accuracy.png"
    table.write_text(report_markdown(arms, command, title))
    plot_accuracy(arms, png)
    return table, png
