"""Does asynchronous training cost learning? The default config (synchronous since issue 27:
`sampling.max_staleness: 0`, every batch from the current policy) against the same config with
`sampling.max_staleness=1` (the engines generate the next batch while the learner trains), per
setting and seed, by held-out accuracy. Writes docs/results/async_learning.md and the raw
figures (per run: held-out accuracy and format rate before/after, each step's batch reward,
response length and drift) in docs/results/async_learning.json.

    python bench/async_learning.py                                  # every setting, seeds 0 1 2
    python bench/async_learning.py --settings tiny_3x --seeds 0     # one cell
    python bench/async_learning.py --report                         # the .md again from the .json

Runs already in the .json are kept (a run is keyed by setting, arm and seed), so the command
can be resumed; `--fresh` starts over. Each run is `rlsys train` in its own process with the
setting's overrides; run directories go under runs/async-learning/.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_MD = ROOT / "docs" / "results" / "async_learning.md"
OUT_JSON = OUT_MD.with_suffix(".json")
RUNS = ROOT / "runs" / "async-learning"
QUIET = ["logging.progress_bar=false", "logging.wandb=disabled", "logging.plot=false", "checkpoint.export_hf=false"]

# name -> (what it is, overrides). tiny: the embedded default (its model is built per seed, as
# `rlsys train seed=S` does); tiny_3x: its learning rate x3 (where the old default collapsed);
# small: the 25M-parameter embedded model of bench/vs_trl.py (where the old default diverged in
# steps 9-10), built once from seed 0 (its warm start takes ~15 min on one core) and trained with
# each RL seed.
SETTINGS = {
    "tiny": ("embedded default (tiny), lr 2e-4, 30 steps", []),
    "tiny_3x": ("embedded default (tiny), lr 6e-4, 30 steps", ["learner.lr=6e-4"]),
    "small": ("embedded small model (seed-0 build), lr 2e-4, 12 steps", ["model.path={small}", "total_steps=12"]),
}


def small_model() -> str:
    """The seed-0 warm-started small model directory, built by project code (cached)."""
    sys.path.insert(0, str(ROOT))
    from launch.embedded import embedded_model
    from rlsys.config import load_config

    return str(embedded_model(load_config(None, ["model.path=embedded:small"])))
ARMS = {"default": [], "async_k1": ["sampling.max_staleness=1"]}
TOLERANCE = 0.05  # the bar: asynchronous training within 5 points of k = 0


def run_one(setting: str, arm: str, seed: int) -> dict:
    out = RUNS / f"{setting}-{arm}-s{seed}"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [str(ROOT / ".venv" / "bin" / "rlsys"), "train", f"seed={seed}", f"output_dir={out}",
           *QUIET, *(o.format(small=small_model()) if "{small}" in o else o for o in SETTINGS[setting][1]),
           *ARMS[arm]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{setting}/{arm}/seed {seed}: rc {proc.returncode}\n{proc.stderr[-3000:]}")
    return {"setting": setting, "arm": arm, "seed": seed, "seconds": time.perf_counter() - t0,
            "command": " ".join(cmd[1:]), **extract(max(out.iterdir(), key=lambda p: p.stat().st_mtime))}


# Per-step figures kept for each run (metrics.jsonl key -> short name): what the cause page
# (docs/results/async_cause.md) reads.
STEP_FIELDS = {
    "reward/mean": "reward", "reward/format_rate": "format_rate", "reward/accuracy": "accuracy",
    "batch/response_length_mean": "response_length", "batch/truncated_frac": "truncated_frac",
    "batch/zero_variance_group_frac": "zero_variance_groups", "async/version_lag_mean": "version_lag",
    "learner/drift_kl": "drift_kl", "learner/drift_seq_kl": "drift_seq_kl",
    "learner/is_ratio_low_frac": "ratio_below_half", "learner/is_ratio_high_frac": "ratio_above_2",
    "learner/is_weight_clip_frac": "is_clip_frac", "learner/mismatch_abs_max": "mismatch_abs_max",
    "learner/grad_norm": "grad_norm", "learner/no_signal_skipped": "no_signal_skipped",
}


def extract(run: Path) -> dict:
    """Held-out figures from summary.json and the per-step figures of STEP_FIELDS (None where a
    step has no value: the learner fields of a step whose update was skipped)."""
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/mean" in r]
    return {
        "run_dir": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run),
        "before": summary["eval_before"]["accuracy"], "after": summary["eval_after"]["accuracy"],
        "format_before": summary["eval_before"]["format_rate"], "format_after": summary["eval_after"]["format_rate"],
        "no_signal_skipped": sum(int(r.get("learner/no_signal_skipped", 0)) for r in steps),
        "steps": {short: [None if key not in r else round(r[key], 5) for r in steps]
                  for key, short in STEP_FIELDS.items()},
    }


def report(results: list[dict]) -> str:
    lines = ["# The default (synchronous, k = 0) vs asynchronous k = 1: held-out accuracy", "",
             "Built by `python bench/async_learning.py` (raw figures: `async_learning.json`). Each cell: held-out",
             "accuracy after training (greedy, rule verifier), mean over seeds, with each seed's figure. The",
             "default is `sampling.max_staleness: 0`, so \"default vs k = 0\" is one run per seed; the k = 1 column",
             f"says whether asynchronous training stays within {TOLERANCE:.2f} of it.", "",
             "| setting | seeds | before | default (k = 0) | async k = 1 | k = 1 - default | k = 1 within 5 points |",
             "|---|---|---|---|---|---|---|"]
    for name, (what, _) in SETTINGS.items():
        cell = {arm: sorted((r for r in results if r["setting"] == name and r["arm"] == arm), key=lambda r: r["seed"])
                for arm in ARMS}
        seeds = sorted({r["seed"] for r in cell["default"]} & {r["seed"] for r in cell["async_k1"]})
        if not seeds:
            continue
        pick = {arm: [r for r in rs if r["seed"] in seeds] for arm, rs in cell.items()}
        mean = {arm: statistics.mean(r["after"] for r in rs) for arm, rs in pick.items()}
        before = statistics.mean(r["before"] for r in pick["default"])
        each = {arm: ", ".join(f"{r['after']:.3f}" for r in rs) for arm, rs in pick.items()}
        gap = mean["async_k1"] - mean["default"]
        lines.append(f"| {what} | {', '.join(map(str, seeds))} | {before:.3f} | {mean['default']:.3f} ({each['default']}) "
                     f"| {mean['async_k1']:.3f} ({each['async_k1']}) | {gap:+.3f} | {'yes' if gap >= -TOLERANCE else 'no'} |")
    lines += ["", "The small model's held-out accuracy does not move in 12 steps at lr 2e-4 in either arm (its batch",
              "reward stays near 0.8 throughout: `steps.reward` in the .json), so that row shows no divergence",
              "and no learning. The old default's divergence on that model was on the bench task of",
              "bench/vs_trl.py; that page's per-step rewards are those of the default (k = 0)."]
    lines += ["", "The own-task worked example (docs/OWN_TASK.md: SFT, then 40 GRPO steps at lr 6e-4) trains at the",
              "default k = 0 too, so its default and k = 0 runs are the same ones: held-out accuracy 0.438 -> 0.781,",
              "0.422 -> 1.000 and 0.281 -> 0.734 on seeds 0-2 (`python bench/own_task.py`, docs/results/own_task.md).",
              "k = 1 was not rerun there; in a CI run on 2026-12-01 it fell from 0.44 to 0.20."]
    lines += ["", "Format rate after training (held-out), per run:", ""]
    for r in sorted(results, key=lambda r: (r["setting"], r["arm"], r["seed"])):
        lines.append(f"- {r['setting']} / {r['arm']} / seed {r['seed']}: format {r['format_before']:.3f} -> "
                     f"{r['format_after']:.3f}, accuracy {r['before']:.3f} -> {r['after']:.3f}, "
                     f"no-signal steps skipped {r['no_signal_skipped']}, {r['seconds']:.0f} s")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--report", action="store_true", help="rewrite the .md from the .json; run nothing")
    ap.add_argument("--fresh", action="store_true", help="forget the runs already in the .json")
    ap.add_argument("--reextract", action="store_true", help="re-read each run's figures from its run directory")
    args = ap.parse_args()
    results = [] if args.fresh or not OUT_JSON.exists() else json.loads(OUT_JSON.read_text())
    if args.reextract:
        for i, r in enumerate(results):
            run = max((RUNS / f"{r['setting']}-{r['arm']}-s{r['seed']}").iterdir(), key=lambda p: p.stat().st_mtime)
            results[i] = {k: r[k] for k in ("setting", "arm", "seed", "seconds", "command")} | extract(run)
        OUT_JSON.write_text(json.dumps(results, indent=1) + "\n")
    if not args.report:
        done = {(r["setting"], r["arm"], r["seed"]) for r in results}
        for seed in args.seeds:
            for setting in args.settings:
                for arm in args.arms:
                    if (setting, arm, seed) in done:
                        continue
                    r = run_one(setting, arm, seed)
                    print(f"{setting} {arm} seed {seed}: {r['before']:.3f} -> {r['after']:.3f} "
                          f"(format {r['format_after']:.3f}) in {r['seconds']:.0f} s", flush=True)
                    results.append(r)
                    OUT_JSON.write_text(json.dumps(results, indent=1) + "\n")
    OUT_MD.write_text(report(results))
    print(OUT_MD.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
