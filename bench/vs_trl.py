"""rlsys against TRL's GRPOTrainer on the same work, side by side (issue 14). Writes
docs/results/vs_trl.md and the raw figures in docs/results/vs_trl.json.

    python bench/vs_trl.py                         # tiny then small: rlsys, TRL, rlsys, TRL each
    python bench/vs_trl.py --sizes tiny --steps 3  # a short check
    python bench/vs_trl.py --report                # the .md again from the .json, nothing rerun

Same model (the warm-started embedded model directory, float32, built by launch/embedded.py),
same prompts (a JSONL visual task written here from rlsys/data/synthetic.py, read by both
through rlsys.data.datasets.load_prompts with the R1 system prompt), same reward (rlsys's
accuracy + 0.5 x r1_format, the project's functions), same settings (16 prompts x 8 samples,
48 new tokens, T 0.7, lr 2e-4 constant, clip 0.2/0.28, token-mean loss, no KL, one optimizer
step per 128 samples). rlsys runs its default config (configs/default.yaml) with only the task's
overrides. TRL (not a project dependency) is pip-installed once into its own venv under
$RLSYS_BENCH_DIR (default ~/.cache/rlsys/bench), which sees the project venv through a .pth
file; that install is the only download. Run directories go to $RLSYS_BENCH_DIR/work.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_MD = ROOT / "docs" / "results" / "vs_trl.md"
OUT_JSON = OUT_MD.with_suffix(".json")
VENV = ROOT / ".venv"
BENCH = Path(os.environ.get("RLSYS_BENCH_DIR", "~/.cache/rlsys/bench")).expanduser()
TRL_PIN = ["trl==1.16.0", "accelerate"]
PROMPTS, GROUP, NEW_TOKENS, TEMPERATURE, LR = 16, 8, 48, 0.7, 2e-4
FAMILY, TRAIN_ROWS, SEED = "majority_color", 512, 0
# The family's scenes and answers, asked in new words: a task file the model never saw as such,
# and a prompt of ~112 tokens after the chat template (R1 system prompt and 4 image tokens included).
QUESTION = "Look at the shapes in the image. Which colour appears most often?"
RLSYS_STAGES = ("generate", "update", "sync", "wait_ahead")
RATIOS = ("samples_per_s", "steady_samples_per_s", "wall_samples_per_s", "tokens_per_s")


# ---- setup: the TRL venv, the model, the task ------------------------------------------------

def trl_python() -> Path:
    """The TRL venv's python, made once: a bare venv whose .pth adds the project venv's
    site-packages (with its own .pth files) and the repo root, then trl + accelerate, no deps."""
    venv = BENCH / "trl-venv"
    py, ready = venv / "bin" / "python", venv / ".ready"
    if ready.exists() and ready.read_text() == " ".join(TRL_PIN):
        return py
    project_py = str(VENV / "bin" / "python")
    subprocess.run([project_py, "-m", "venv", "--clear", "--without-pip", str(venv)], check=True)
    Path(_purelib(py), "rlsys_project.pth").write_text(
        f"import site; site.addsitedir({_purelib(project_py)!r})\n{ROOT}\n")
    subprocess.run([project_py, "-m", "pip", "--python", str(py), "install", "--no-deps", "--quiet", *TRL_PIN],
                   check=True)
    ready.write_text(" ".join(TRL_PIN))
    return py


def _purelib(python) -> str:
    return subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   text=True).strip()


def model_dir(size: str) -> Path:
    """The warm-started embedded model of `size`, built by project code (cached)."""
    from launch.embedded import embedded_model
    from rlsys.config import load_config

    return embedded_model(load_config(None, [f"model.path=embedded:{size}"]))


def write_task(work: Path, rows: int = TRAIN_ROWS) -> Path:
    """train.jsonl (+ PNG files) of the task; test.jsonl holds 16 held-out rows (rlsys wants a test
    file; evaluation is off)."""
    from rlsys.data.synthetic import generate_task_rows

    for split, n in (("train", rows), ("test", 16)):
        (work / "img").mkdir(parents=True, exist_ok=True)
        with open(work / f"{split}.jsonl", "w") as fh:
            for r in generate_task_rows(FAMILY, n, SEED, split=split):
                img = work / "img" / f"{r['id']}.png"
                img.write_bytes(r["images"][0])
                fh.write(json.dumps({"id": r["id"], "prompt": QUESTION, "images": [f"img/{img.name}"],
                                     "answer": r["answer"]}) + "\n")
    return work / "train.jsonl"


def load_task(path: Path) -> list:
    """The prompts as rlsys reads them (R1 system prompt, images resized to the pixel budget)."""
    from rlsys.data.datasets import load_prompts
    from rlsys.data.templates import R1_SYSTEM_PROMPT

    return load_prompts(path, system_prompt=R1_SYSTEM_PROMPT).prompts


def prompt_tokens(model: Path, train: Path) -> float:
    """Mean prompt length in tokens after the chat template, image tokens included."""
    import io

    from PIL import Image

    from rlsys.models.forward import render_prompt
    from rlsys.models.loading import load_processor

    proc = load_processor(str(model))
    prompts = load_task(train)[:64]
    lens = [proc(text=[render_prompt(proc, p)], images=[Image.open(io.BytesIO(p.images[0].png))],
                 return_tensors="pt")["input_ids"].shape[1] for p in prompts]
    return statistics.mean(lens)


# ---- one run of each system ----------------------------------------------------------------

def run_rlsys(model: Path, train: Path, steps: int, out: Path) -> dict:
    cmd = [str(VENV / "bin" / "rlsys"), "train", f"model.path={model}", f"data.train={train}",
           f"data.test={train.with_name('test.jsonl')}", f"total_steps={steps}", "eval.before_and_after=false",
           "logging.wandb=disabled", f"output_dir={out}", "logging.progress_bar=false"]
    wall, load = _timed(cmd, out / "rlsys.log")
    (run,) = [d for d in out.iterdir() if (d / "metrics.jsonl").exists()]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "time/step" in r]
    loop = sum(r["time/step"] for r in rows)
    samples = PROMPTS * GROUP * len(rows)
    tokens = sum(r["throughput/tokens_per_s"] * r["time/step"] for r in rows)
    res = {"system": "rlsys", "command": " ".join(cmd), "steps": len(rows), "samples": samples,
           "step_s": [r["time/step"] for r in rows], "loop_s": loop, "wall_s": wall,
           "samples_per_s": samples / loop, "wall_samples_per_s": samples / wall,
           "tokens_per_s": tokens / loop, "response_len": tokens / samples,
           "reward": statistics.mean(r.get("reward/mean", 0.0) for r in rows), **load,
           "reward_steps": [r.get("reward/mean", 0.0) for r in rows],
           "length_steps": [r.get("batch/response_length_mean", 0.0) for r in rows],
           # cross-check of loop_s: the run's own clock of its training loop (summary.json)
           "summary_s": json.loads((run / "summary.json").read_text()).get("seconds")}
    res.update({f"time_{s}": statistics.mean(r.get(f"time/{s}", 0.0) for r in rows) for s in RLSYS_STAGES})
    for heavy in ("checkpoints", "hf_model"):  # ~470 MB per small run; the figures are read
        shutil.rmtree(run / heavy, ignore_errors=True)
    return _steady(res)


def learned(res: dict) -> tuple[bool, str]:
    """Whether a run's figures may be quoted: not when its batch reward fell by more than half
    from its best step, or when its mean response reached 90% of the generation limit (the
    small model's diverged runs ran to the limit). -> (ok, why not)."""
    rewards, lengths = res.get("reward_steps"), res.get("length_steps")
    if not rewards:
        return False, "no per-step figures"
    best = max(range(len(rewards)), key=rewards.__getitem__)
    if min(rewards[best:]) < 0.5 * rewards[best]:
        return False, f"reward fell from {rewards[best]:.2f} to {min(rewards[best:]):.2f}"
    if max(lengths) >= 0.9 * NEW_TOKENS:
        return False, f"responses reached {max(lengths):.0f} of {NEW_TOKENS} tokens"
    return True, ""


def _steady(res: dict) -> dict:
    """Samples/s over steps 2.. (the first step of either system carries one-off warm-up)."""
    rest = res["step_s"][1:]
    res["steady_samples_per_s"] = PROMPTS * GROUP * len(rest) / sum(rest) if rest else float("nan")
    return res


def run_trl(py: Path, model: Path, train: Path, steps: int, out: Path) -> dict:
    spec = out / "trl_spec.json"
    spec.write_text(json.dumps({"model": str(model), "train": str(train), "steps": steps, "out": str(out)}))
    cmd = [str(py), str(Path(__file__).resolve()), "--trl-child", str(spec)]
    wall, load = _timed(cmd, out / "trl.log")
    res = json.loads((out / "trl_result.json").read_text())
    samples = PROMPTS * GROUP * res["steps"]
    res.update({"system": "trl", "command": " ".join(cmd), "samples": samples, "wall_s": wall,
                "samples_per_s": samples / res["loop_s"], "wall_samples_per_s": samples / wall,
                "train_call_samples_per_s": samples / res["train_call_s"],
                "tokens_per_s": res["tokens"] / res["loop_s"], "response_len": res["tokens"] / samples, **load})
    return _steady(res)


def _busy_cpu_s() -> float:
    """CPU-seconds this machine has spent busy (all processes), from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _quiesce(limit_s: float = 60.0) -> float:
    """Wait (at most limit_s) until the machine is idle, e.g. the last run's Ray has exited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        b0 = _busy_cpu_s()
        time.sleep(1.0)
        if _busy_cpu_s() - b0 < 0.15:
            break
    return time.perf_counter() - t0


def _timed(cmd: list[str], log: Path) -> tuple[float, dict]:
    """Runs `cmd` on an idle machine; -> (wall seconds, load: mean busy cores machine-wide and
    those not spent by `cmd`'s process tree, i.e. anything else running meanwhile)."""
    quiet = _quiesce()
    print("$ " + " ".join(cmd), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    b0, c0, t0 = _busy_cpu_s(), _children_cpu_s(), time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"rc {proc.returncode}: {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    busy, own = _busy_cpu_s() - b0, _children_cpu_s() - c0
    return wall, {"quiesce_s": quiet, "busy_cores": busy / wall, "other_cores": max(0.0, busy - own) / wall}


def _children_cpu_s() -> float:
    """CPU-seconds of this process's finished children (and the descendants they waited for)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# ---- the TRL side (runs in the TRL venv) ---------------------------------------------------

def _as_parts(messages: list[dict]) -> list[dict]:
    """String contents as one text part, so the column is one Arrow type (same rendered text)."""
    return [dict(m, content=[{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"])
            for m in messages]


def trl_child(spec_path: str) -> None:
    """GRPOTrainer on the spec's model and task; writes trl_result.json. The training loop's
    time is the sum of on_step_begin -> on_step_end (generation, scoring, loss, optimizer)."""
    import io

    import torch
    from datasets import Dataset
    from PIL import Image
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.data_utils import prepare_multimodal_messages

    from rlsys.models.forward import render_prompt, suppressed_token_ids
    from rlsys.models.loading import load_policy, load_processor
    from rlsys.rewards.r1 import accuracy, r1_format

    spec = json.loads(Path(spec_path).read_text())
    prompts = load_task(Path(spec["train"]))
    processor = load_processor(spec["model"])
    data = Dataset.from_list([{"prompt": _as_parts(p.messages), "answer": p.answer,
                               "image": Image.open(io.BytesIO(p.images[0].png)).convert("RGB")} for p in prompts])
    row = data[0]  # TRL's prompt text must be rlsys's, token for token
    trl_text = processor.apply_chat_template(prepare_multimodal_messages(row["prompt"], [row["image"]]),
                                             tokenize=False, add_generation_prompt=True)
    assert trl_text == render_prompt(processor, prompts[0]), (trl_text, render_prompt(processor, prompts[0]))

    def text(c):  # conversational completions are [{"role": "assistant", "content": str}]
        return c[0]["content"] if isinstance(c, list) else c

    def accuracy_reward(completions, answer, **_):
        return [accuracy(text(c), a) for c, a in zip(completions, answer)]

    def r1_format_reward(completions, **_):
        return [r1_format(text(c)) for c in completions]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], None

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t0)

    model = load_policy(spec["model"], dtype="float32")
    args = GRPOConfig(
        output_dir=str(Path(spec["out"]) / "trl"), max_steps=spec["steps"], learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, per_device_train_batch_size=PROMPTS * GROUP,
        gradient_accumulation_steps=1, num_generations=GROUP, max_completion_length=NEW_TOKENS,
        temperature=TEMPERATURE, beta=0.0, epsilon=0.2, epsilon_high=0.28, loss_type="dapo",
        reward_weights=[1.0, 0.5], generation_kwargs={"suppress_tokens": suppressed_token_ids(processor)},
        gradient_checkpointing=False, use_cpu=True, bf16=False, fp16=False, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, seed=SEED, dataloader_num_workers=0)
    timer = StepTimer()
    trainer = GRPOTrainer(model=model, processing_class=processor, reward_funcs=[accuracy_reward, r1_format_reward],
                          args=args, train_dataset=data, callbacks=[timer])
    t0 = time.perf_counter()
    trainer.train()
    train_call = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    tokens = sum(h["completions/mean_length"] * PROMPTS * GROUP for h in logs)
    import trl

    Path(spec["out"], "trl_result.json").write_text(json.dumps({
        "steps": len(timer.times), "loop_s": sum(timer.times), "step_s": timer.times, "train_call_s": train_call,
        "tokens": tokens, "reward": statistics.mean(h.get("reward", 0.0) for h in logs),
        "reward_steps": [h.get("reward", 0.0) for h in logs],
        "length_steps": [h["completions/mean_length"] for h in logs],
        "torch_threads": torch.get_num_threads(), "trl_version": trl.__version__}))


# ---- the bench and its page ----------------------------------------------------------------

def bench(sizes: list[str], steps: int) -> dict:
    py = trl_python()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = BENCH / "work" / stamp
    train = write_task(work / "task")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    record = {"commit": commit.stdout.strip() + ("+dirty" if dirty else ""), "date": stamp, "steps": steps,
              "cores": os.cpu_count(), "argv": " ".join(sys.argv[1:]), "sizes": {}, "runs": []}
    t0 = time.perf_counter()
    for size in sizes:
        t_build = time.perf_counter()
        model = model_dir(size)
        record["sizes"][size] = {"model": str(model), "build_s": time.perf_counter() - t_build,
                                 "prompt_tokens": prompt_tokens(model, train)}
        for rep in (1, 2):
            for system in ("rlsys", "trl"):
                out = work / f"{size}-{system}-{rep}"
                out.mkdir(parents=True)
                res = (run_rlsys(model, train, steps, out) if system == "rlsys"
                       else run_trl(py, model, train, steps, out))
                record["runs"].append({"size": size, "rep": rep, **res})
                print(json.dumps({k: v for k, v in record["runs"][-1].items() if k not in ("command", "step_s")}),
                      flush=True)
                record["bench_s"] = time.perf_counter() - t0
                OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
                OUT_JSON.write_text(json.dumps(record, indent=1))
    return record


def _mean(runs: list[dict], key: str) -> float:
    return statistics.mean(r[key] for r in runs)


LOAD_NOTE = ("Each run starts on an idle machine (the bench waits for the last run's processes to exit). "
             "**Busy cores (others)**: the machine-wide mean of busy cores during the run and, in brackets, those "
             "not accounted to the run's own process tree (another job, or Ray processes rlsys did not reap); "
             "a TRL run with others above 0.1 was disturbed.")


def _load(r: dict) -> str:
    return f"{r['busy_cores']:.2f} ({r['other_cores']:.2f})" if "busy_cores" in r else "not measured"


def render(rec: dict) -> str:
    return "\n".join(_header(rec)) + "\n"


def _header(rec: dict) -> list[str]:
    trl_version = next((r["trl_version"] for r in rec["runs"] if r["system"] == "trl"), "?")
    lines = [
        "# rlsys vs TRL GRPOTrainer on the same work", "",
        f"`{('python bench/vs_trl.py ' + rec['argv']).strip()}` at commit {rec['commit']}, {rec['date']}, on this machine "
        f"({rec['cores']} cores, no GPU); the whole bench took {rec.get('bench_s', 0) / 60:.1f} min ("
        + ", ".join(f"{s} model built or found in {i.get('build_s', 0):.0f} s" for s, i in rec["sizes"].items())
        + "). "
        f"rlsys: its default config (configs/default.yaml) with the task's overrides only; TRL {trl_version} "
        "GRPOTrainer with transformers `generate`, in its own venv (the bench installs it). Per size the runs "
        "alternate rlsys, TRL, rlsys, TRL. Reproduce: the command above; `--report` re-renders this page "
        "from vs_trl.json.", "",
        "**Samples/s (training loop)**: rlsys: samples / sum of `time/step` (metrics.jsonl); TRL: samples / "
        "sum of on_step_begin -> on_step_end (a TrainerCallback; generation, rewards, loss and optimizer step "
        "of each step). **Whole process**: samples / wall clock of the subprocess (startup, model load, data, "
        "and for rlsys Ray, the vLLM engine and its default final checkpoint + HF export; TRL saves nothing). "
        "TRL's step window leaves out the Trainer's fetch of the next 128 rows from its dataloader; its "
        "`train()` call, which includes it, is in the last column.", "", LOAD_NOTE
        if all("busy_cores" in r for r in rec["runs"]) else
        "This record predates the bench's idle-machine wait and load figures: a run may have overlapped the "
        "previous run's exiting processes.",
    ]
    return lines + _tables(rec) + _settings(rec)


def _tables(rec: dict) -> list[str]:
    lines = [
        "", "## Ratios rlsys / TRL (mean of the two runs each)", "",
        "| model | prompt tokens | samples/s (loop) | samples/s (loop, steps 2..) | samples/s (whole process) | "
        "response tokens/s (loop) |", "|---|---|---|---|---|---|"]
    for size, info in rec["sizes"].items():
        # rlsys's speed is quoted only from its runs that learned (`learned`): a speed from a
        # diverging run is no speed. The peer's runs all count, marked where they did not learn.
        rl = [r for r in rec["runs"] if r["size"] == size and r["system"] == "rlsys" and learned(r)[0]]
        tr = [r for r in rec["runs"] if r["size"] == size and r["system"] == "trl"]
        note = " (TRL's runs did not learn: see below)" if any(not learned(r)[0] for r in tr) else ""
        if rl and tr:
            lines.append(f"| {size}{note} | {info['prompt_tokens']:.0f} | "
                         + " | ".join(f"{_mean(rl, k) / _mean(tr, k):.2f}x" for k in RATIOS) + " |")
        else:
            lines.append(f"| {size} | {info['prompt_tokens']:.0f} | no ratio: no rlsys run learned (below) | | | |")
    lines += ["", "## Per run", "",
              "| model | run | system | steps | samples/s (loop) | (steps 2..) | samples/s (process) | tokens/s (loop) | "
              "mean response (tokens) | mean reward | learned | loop s | process s | busy cores (others) | rlsys generate / "
              "update / sync / wait_ahead (s per step) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rec["runs"]:
        stages = (" / ".join(f"{r[f'time_{s}']:.2f}" for s in RLSYS_STAGES) if r["system"] == "rlsys"
                  else f"train() call: {r['train_call_samples_per_s']:.1f} samples/s")
        lines.append(f"| {r['size']} | {r['rep']} | {r['system']} | {r['steps']} | {r['samples_per_s']:.2f} | "
                     f"{r['steady_samples_per_s']:.2f} | {r['wall_samples_per_s']:.2f} | {r['tokens_per_s']:.1f} | "
                     f"{r['response_len']:.1f} | "
                     f"{r['reward']:.3f} | {_learned_cell(r)} | {r['loop_s']:.1f} | {r['wall_s']:.1f} | {_load(r)} | "
                     f"{stages} |")
    lines += ["", "## Per step: batch reward and mean response length", "",
              "A run is marked (learned: **no**) when its reward fell by more than half from its best step or its "
              f"mean response reached 90% of the {NEW_TOKENS}-token limit; marked rlsys runs are left out of the ratios.", "",
              "| model | run | system | reward per step | response tokens per step |", "|---|---|---|---|---|"]
    for r in rec["runs"]:
        if "reward_steps" in r:
            lines.append(f"| {r['size']} | {r['rep']} | {r['system']} | "
                         + " ".join(f"{x:.2f}" for x in r["reward_steps"]) + " | "
                         + " ".join(f"{x:.0f}" for x in r["length_steps"]) + " |")
    return lines


def _learned_cell(r: dict) -> str:
    ok, why = learned(r)
    return "yes" if ok else f"**no**: {why}"


def _settings(rec: dict) -> list[str]:
    lines = ["", "## Settings (both systems)", "",
              "- Model: the warm-started embedded model directory of each size (launch/embedded.py), float32, "
              "loaded by both: " + ", ".join(f"`{s}`: `{i['model']}`" for s, i in rec["sizes"].items()) + ".",
              f"- Task: `{FAMILY}` from rlsys/data/synthetic.py (seed {SEED}), {TRAIN_ROWS} rows written as JSONL + "
              "PNG files; both read them through rlsys.data.datasets.load_prompts (R1 system prompt, image "
              "resized to the pixel budget). TRL gets the same messages (conversational, an image part) and "
              "images (`image` column); the bench checks that TRL's rendered prompt equals rlsys's.",
              "- Reward: accuracy (weight 1.0) + r1_format (weight 0.5), the project's functions "
              "(rlsys/rewards/r1.py); TRL: `reward_funcs` wrapping them, `reward_weights=[1.0, 0.5]`.",
              f"- {PROMPTS} prompts x {GROUP} samples per step, {NEW_TOKENS} new tokens, T {TEMPERATURE}, "
              f"lr {LR} constant, clip 0.2 / 0.28, token-mean loss (rlsys `loss_agg=token_mean`, TRL "
              "`loss_type=dapo`), no KL (rlsys `kl_coef=0`, TRL `beta=0`), grad clip 1.0, one optimizer step "
              f"per {PROMPTS * GROUP} samples, {rec['steps']} steps per run.",
              "- rlsys overrides: `model.path`, `data.train`, `data.test`, `total_steps`, "
              "`eval.before_and_after=false`, `logging.wandb=disabled`, `logging.progress_bar=false`, `output_dir`.",
              "- TRL: `per_device_train_batch_size=128`, `gradient_accumulation_steps=1`, `num_generations=8`, "
              "`max_completion_length=48`, `gradient_checkpointing=False` (TRL's default is on; rlsys's off), "
              "`lr_scheduler_type=constant`, no vLLM, `use_cpu=True`, bf16/fp16 off, `logging_steps=1`, "
              "`save_strategy=no`, `report_to=none`, `generation_kwargs={suppress_tokens: [image/video pad "
              f"ids]}}` (rlsys: logit bias -100 on the same ids); torch threads "
              f"{next((r['torch_threads'] for r in rec['runs'] if r['system'] == 'trl'), '?')}.",
              "", "## Commands", ""]
    seen = set()
    for r in rec["runs"]:
        if (r["size"], r["system"]) not in seen:
            seen.add((r["size"], r["system"]))
            lines.append(f"- {r['size']} {r['system']}: `{r['command']}`")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--report", action="store_true", help="re-render the .md from the .json only")
    ap.add_argument("--trl-child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.trl_child:
        trl_child(a.trl_child)
        return 0
    if Path(sys.prefix).resolve() != VENV.resolve():  # the bench itself runs on the project venv
        os.execv(VENV / "bin" / "python", [str(VENV / "bin" / "python"), __file__, *sys.argv[1:]])
    rec = json.loads(OUT_JSON.read_text()) if a.report else bench(a.sizes, a.steps)
    OUT_MD.write_text(render(rec))
    print(OUT_MD)
    return 0


if __name__ == "__main__":
    sys.exit(main())
