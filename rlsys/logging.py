"""Metric sinks: console progress, a JSONL file, wandb (offline unless configured), curves.png.

Sinks receive flat {name: number} rows built from typed records at the last moment."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from rlsys.config import RunConfig, to_dict
from rlsys.signals import stop_signals_held


def flatten(prefix: str, record: Any) -> dict[str, float]:
    """A dataclass (or dict) of numbers -> {prefix/field: float}; None fields are left out."""
    import dataclasses

    items = dataclasses.asdict(record).items() if dataclasses.is_dataclass(record) else record.items()
    out = {}
    for key, value in items:
        if value is None or isinstance(value, (str, list, dict)):
            continue
        out[f"{prefix}/{key}" if prefix else key] = float(value)
    return out


class MetricsLogger:
    """`first_step`: the step a resumed run continues after. Rows of later steps (written after
    the checkpoint it resumes from) are dropped from metrics.jsonl, so every step's row is there
    once; the wandb run (id = the run directory's name) is resumed too."""

    def __init__(self, cfg: RunConfig, run_dir: Path, steps_left: int, first_step: int = 0):
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        self.rows = _rows(self.path) if first_step else []
        if first_step:
            self.truncate(first_step)
        self._bar = None
        if cfg.logging.progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=steps_left, desc="train", unit="step", file=sys.stderr,
                             dynamic_ncols=True)
        self._wandb = None
        if cfg.logging.wandb != "disabled":
            import wandb

            with stop_signals_held():  # its service process must outlive a signal to the group
                self._wandb = wandb.init(project=cfg.logging.project, name=run_dir.name, id=run_dir.name,
                                         resume="allow", dir=str(run_dir), mode=cfg.logging.wandb,
                                         config=to_dict(cfg), reinit="finish_previous")
        self._plot = cfg.logging.plot

    def log(self, step: int, row: dict[str, float]) -> None:
        row = {"step": step, **row}
        self.rows.append(row)
        with self.path.open("a") as fh:
            fh.write(_jsonl(row))
        self._to_wandb(lambda run: run.log(row, step=step))
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix({k.split("/")[-1]: f"{row[k]:.3g}" for k in
                                   ("reward/mean", "reward/accuracy", "time/step") if k in row})

    def truncate(self, step: int) -> None:
        """Forget the rows after `step` (a run gone back to a checkpoint repeats those steps)."""
        self.rows = [r for r in self.rows if r["step"] <= step]
        self.path.write_text("".join(_jsonl(r) for r in self.rows))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._plot and self.rows:
            plot_curves(self.rows, self.run_dir / "curves.png")
        self._to_wandb(lambda run: run.finish())

    def _to_wandb(self, call) -> None:
        """A sink that broke (its service process killed, e.g. by a signal to every process of a
        job) is dropped with one warning; metrics.jsonl keeps every row."""
        if self._wandb is None:
            return
        try:
            call(self._wandb)
        except Exception as err:
            self._wandb = None
            print(f"[rlsys] wandb stopped working ({type(err).__name__}: {err}); the run goes on, "
                  f"metrics stay in {self.path}", file=sys.stderr, flush=True)


def _jsonl(row: dict) -> str:
    return json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}) + "\n"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_curves(rows: list[dict[str, float]], out: Path) -> None:
    """Reward, accuracy (train and held-out) and KL against step, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("reward", ["reward/mean"]), ("accuracy", ["reward/accuracy", "eval/accuracy"]),
              ("KL to reference / approx KL", ["learner/kl", "learner/approx_kl"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2))
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o" if key.startswith("eval") else None, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
