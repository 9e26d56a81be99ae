"""Reward models on the embedded task, from nothing: a scalar RM trained by `rlsys train-rm` on
preference pairs and a critique judge fine-tuned by `rlsys sft` on critique demonstrations,
both drawn from the synthetic task (rlsys/data/preferences.py); then GRPO with each model as
the ONLY reward (no rule verifier), held-out accuracy measured by the rule verifier, per seed.
Writes docs/results/reward_models.md.

    python bench/reward_models.py [SEED ...]     # default seeds 0 1 2; about 45 minutes here
    python bench/reward_models.py --report       # the results page again from the last run's records

Every step is an `rlsys` command (printed, and listed in the results) except the data files,
which `python bench/reward_models.py --data-only DIR` writes alone. Work files go to
$RLSYS_BENCH_DIR (default /tmp/rlsys-bench-rm); `summary.json` there keeps the figures.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "reward_models.md"
RLSYS = [sys.executable, "-m", "launch.cli"]

# Recipes (the figures below come from them).
RM_TRAIN = ["train_rm.epochs=2", "train_rm.batch_size=16", "train_rm.lr=5e-4", "train_rm.warmup_steps=10"]
JUDGE_SFT = ["sft.epochs=2", "sft.batch_size=16", "sft.lr=1e-3", "sft.warmup_steps=10"]
RL = ["total_steps=30", "eval.rewards=[{name: accuracy}]", "logging.progress_bar=false"]


def make_data(work: Path, seed: int = 0) -> dict[str, Path]:
    """pairs (train / held-out) and critique demonstrations from the embedded task's prompts."""
    from launch.embedded import synthetic_data
    from launch.evaluate import load_split_counted
    from rlsys.config import load_config
    from rlsys.data.preferences import (critique_demonstrations, preference_pairs, write_demonstration_rows,
                                        write_pair_rows)
    from rlsys.rewards.judge import DEFAULT_TEMPLATE

    cfg = load_config(None, [f"seed={seed}"])
    train_path, test_path = synthetic_data(cfg)
    train, _ = load_split_counted(cfg, str(train_path))
    test, _ = load_split_counted(cfg, str(test_path))
    out = {"pairs": write_pair_rows(preference_pairs(train, seed), work / "pairs.jsonl"),
           "pairs_test": write_pair_rows(preference_pairs(test, seed + 1000), work / "pairs_test.jsonl"),
           "critiques": write_demonstration_rows(critique_demonstrations(train, DEFAULT_TEMPLATE, seed),
                                                 work / "critiques.jsonl")}
    return out


def rlsys(args: list[str], log: Path) -> tuple[str, float]:
    """Run one rlsys command; -> (its stdout, seconds). Fails loudly with its stderr tail."""
    print("$ rlsys " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(RLSYS + args, cwd=ROOT, capture_output=True, text=True)
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"rlsys {' '.join(args)}: rc {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc.stdout, time.perf_counter() - t0


def judge_pair_accuracy(judge_dir: Path, pairs_path: Path, limit: int = 128) -> float:
    """Held-out pair accuracy of the judge: its score of `chosen` above that of `rejected`
    (ties count half), greedy, in-process (rlsys/rewards/judge.py JudgeModel)."""
    from rlsys.config import load_config
    from rlsys.data.datasets import load_prompts
    from rlsys.data.templates import R1_SYSTEM_PROMPT
    from rlsys.protocol import Rollout, RolloutGroup
    from rlsys.rewards.judge import load_template
    from rlsys.rewards.judge_model import JudgeModel
    from rlsys.specs import JudgeSpec, engine_spec

    cfg = load_config(None)
    pairs = load_prompts(pairs_path, pairs=True, system_prompt=R1_SYSTEM_PROMPT).pairs[:limit]
    spec = JudgeSpec(engine=engine_spec(cfg, str(judge_dir)), template=load_template(None), max_new_tokens=96)
    judge = JudgeModel(spec)
    groups = [RolloutGroup(p.prompt, [Rollout([], [], p.chosen, [], "stop", 0), Rollout([], [], p.rejected, [], "stop", 0)])
              for p in pairs]
    scores = judge.score_groups(groups)
    judge.shutdown()
    for s in scores[:3]:
        print("judge:", s.texts)
    wins = [1.0 if s.scores[0] > s.scores[1] else 0.5 if s.scores[0] == s.scores[1] else 0.0 for s in scores]
    return sum(wins) / len(wins)


def rl_run(seed: int, reward_yaml: str, work: Path, tag: str) -> dict:
    config = work / f"{tag}.yaml"
    config.write_text(f"reward:\n  components:\n{reward_yaml}")
    out_dir = work / f"runs-{tag}-{seed}"
    _, seconds = rlsys(["train", "--config", str(config), f"seed={seed}", f"output_dir={out_dir}", *RL],
                       work / f"{tag}-{seed}.log")
    (run,) = out_dir.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    return {"model": tag, "seed": seed, "before": summary["eval_before"]["accuracy"],
            "after": summary["eval_after"]["accuracy"], "seconds": seconds, "run": str(run)}


def reward_hacking(run: str, column: str, last: int = 10) -> dict:
    """Over the run's last `last` steps of sampled responses (the rollout Parquet): the share the
    rule verifier accepts, and the model's mean score of those it accepts and of those it does
    not (a model that scores wrong answers like right ones is being gamed)."""
    import pyarrow.parquet as pq

    from rlsys.rewards import accuracy

    rows = pq.read_table(Path(run) / "rollouts").to_pylist()
    end = max(r["step"] for r in rows)
    rows = [r for r in rows if r["step"] > end - last]
    right = [accuracy(r["response_text"], r["answer"], {}) == 1.0 for r in rows]
    score = [dict(r["reward_components"])[column] for r in rows]

    def mean(xs):
        return sum(xs) / len(xs) if xs else float("nan")

    return {"sampled_accuracy": mean([float(x) for x in right]),
            "score_right": mean([s for s, ok in zip(score, right) if ok]),
            "score_wrong": mean([s for s, ok in zip(score, right) if not ok])}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--data-only"]:
        print(json.dumps({k: str(v) for k, v in make_data(Path(argv[1])).items()}))
        return 0
    work = Path(os.environ.get("RLSYS_BENCH_DIR", "/tmp/rlsys-bench-rm")).resolve()
    if argv[:1] == ["--report"]:
        write_results(**json.loads((work / "summary.json").read_text()))
        return 0
    seeds = [int(s) for s in argv] or [0, 1, 2]
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = make_data(work)
    from launch.embedded import embedded_model
    from rlsys.config import load_config

    policy = embedded_model(load_config(None))
    rm_dir, judge_dir = work / "rm", work / "judge"
    built = {}
    if not (rm_dir / "rlsys_rm.json").exists():
        _, built["rm_s"] = rlsys(["train-rm", f"model.path={policy}", f"train_rm.data={data['pairs']}",
                                  f"train_rm.test={data['pairs_test']}", f"train_rm.output={rm_dir}",
                                  f"output_dir={work / 'runs-build'}", *RM_TRAIN], work / "train-rm.log")
    rm_info = json.loads((rm_dir / "rlsys_rm.json").read_text())
    if not (judge_dir / "config.json").exists():
        _, built["judge_s"] = rlsys(["sft", f"model.path={policy}", f"sft.data={data['critiques']}",
                                     f"sft.output={judge_dir}", f"output_dir={work / 'runs-build'}", *JUDGE_SFT],
                                    work / "sft-judge.log")
    judge_acc = judge_pair_accuracy(judge_dir, data["pairs_test"])
    print(json.dumps({"rm_pair_accuracy": rm_info.get("pair_accuracy"), "judge_pair_accuracy": judge_acc,
                      **built}), flush=True)
    rows = []
    for seed in seeds:
        for tag, entry in (("scalar", f"    - {{name: null, model: scalar, path: {rm_dir}, weight: 1.0}}\n"),
                           ("judge", f"    - {{name: null, model: judge, path: {judge_dir}, weight: 1.0}}\n")):
            rows.append(rl_run(seed, entry, work, tag))
            print(json.dumps(rows[-1]), flush=True)
    summary = {"rows": rows, "rm_info": rm_info, "judge_acc": judge_acc, "built": built, "seeds": seeds,
               "seconds": time.perf_counter() - t0}
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    write_results(**summary)
    return 0


def write_results(rows, rm_info, judge_acc, built, seeds, seconds) -> None:
    def cmd(parts):
        return "rlsys " + " ".join(parts)

    lines = [
        "# Reward models as the only reward: a scalar RM and a critique judge", "",
        f"`python bench/reward_models.py {' '.join(map(str, seeds))}` on this machine ({os.cpu_count()} cores, "
        f"no GPU), {seconds / 60:.0f} min in all. Both models start from the embedded warm-started policy "
        "and are trained by rlsys from data the project draws from the synthetic task "
        "(rlsys/data/preferences.py): pairs prefer a right response (looked, or guessed right) to a wrong "
        "one (a wrong perception, a wrong guess, no format), so the image decides most pairs.", "",
        "## The models", "",
        "| model | built by | held-out pair accuracy | build time |", "|---|---|---|---|",
        f"| scalar RM (value head on the VLM) | `{cmd(['train-rm', *RM_TRAIN])}` | "
        f"{rm_info.get('pair_accuracy', float('nan')):.3f} ({rm_info.get('n_pairs', '?')} pairs) | "
        f"{built.get('rm_s', float('nan')) / 60:.1f} min |",
        f"| critique judge (vLLM, greedy) | `{cmd(['sft', *JUDGE_SFT])}` on critique demonstrations | "
        f"{judge_acc:.3f} (128 pairs; tie = half) | {built.get('judge_s', float('nan')) / 60:.1f} min |", "",
        "## GRPO with each model as the only reward", "",
        f"`{cmd(['train', *RL])}` with `reward.components` = the one model entry; held-out accuracy "
        "(128 prompts, greedy) scored by the rule verifier `accuracy`, which the run does not train on.", "",
        "The last columns read the run's rollout Parquet over steps 21-30: how often the sampled responses "
        "are right by the verifier, and the model's mean score of right and of wrong ones (scalar: raw "
        "head output; judge: 0-10). Where a wrong response scores like a right one, the policy games the "
        "model instead of learning the task.", "",
        "| reward | seed | held-out accuracy before → after | run (incl. both evaluations) | sampled accuracy, "
        "steps 21-30 | model score of right / wrong responses |", "|---|---|---|---|---|---|"]
    for r in rows:
        h = reward_hacking(r["run"], r["model"])
        lines.append(f"| {r['model']} | {r['seed']} | {r['before']:.3f} → {r['after']:.3f} "
                     f"({100 * (r['after'] - r['before']):+.1f} points) | {r['seconds'] / 60:.1f} min | "
                     f"{h['sampled_accuracy']:.3f} | {h['score_right']:.2f} / {h['score_wrong']:.2f} |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
