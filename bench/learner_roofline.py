"""How close rlsys runs to this machine's limit (issue 14, deliverable 3). Writes
docs/results/learner_roofline.md and the raw figures in docs/results/learner_roofline.json.

    python bench/learner_roofline.py                        # tiny and small, 1 thread
    python bench/learner_roofline.py --sizes tiny --threads 2
    python bench/learner_roofline.py --report               # the .md again from the .json

Per model size (the warm-started embedded models of launch/embedded.py), on the default run's
work (16 prompts of the synthetic train split x 8 samples, 48 new tokens, T = 0.7):

1. Generation: rlsys's vLLM engine (`VLLMEngine.generate`, as the rollout actor calls it) vs
   transformers `generate` on the same rendered prompts and images (all 128 sequences in one
   left-padded batch, placeholders suppressed as rlsys does). One untimed call, then 3 timed.
2. Learner update vs the floor, on vLLM's 128 responses of step 1: `PolicyLearner.train_step`
   of the default config (DeepSpeed, gloo, one rank), 2 warm-up steps then the median of 5;
   the floor is a plain PyTorch loop (fresh weights, torch AdamW) over exactly the learner's
   micro-batches (`collate_for_forward`, packed and unpacked), forward through `token_logprobs`,
   loss -(logp * mask).sum() / tokens, backward, one optimizer step per 128 samples.

Each measurement runs in its own subprocess with the same thread count (`--threads`, default 1,
what an engine actor gets) pinned to the same cores. Work files: $RLSYS_BENCH_DIR/roofline.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT_MD = ROOT / "docs" / "results" / "learner_roofline.md"
OUT_JSON = OUT_MD.with_suffix(".json")
WORK = Path(os.environ.get("RLSYS_BENCH_DIR", "~/.cache/rlsys/bench")).expanduser() / "roofline"
PROMPTS, WARM_GEN, TIMED_GEN, WARM_STEPS, TIMED_STEPS = 16, 1, 3, 2, 5


# ---- shared by the children -------------------------------------------------------------------

def setup(size: str, threads: int):
    """Pin this process to `threads` cores; -> (config, model dir, the 16 prompts)."""
    import torch

    os.sched_setaffinity(0, set(range(threads)))
    torch.set_num_threads(threads)
    from launch.embedded import resolve
    from launch.evaluate import load_split
    from rlsys.config import load_config

    cfg = load_config(ROOT / "configs" / "default.yaml", [f"model.path=embedded:{size}"])
    assets = resolve(cfg)
    return cfg, str(assets.model_dir), load_split(cfg, assets.train_path)[:PROMPTS]


def timed(fn, warm: int, n: int) -> tuple[list[float], object]:
    """`warm` untimed calls, then `n` timed ones; -> (seconds per timed call, last result)."""
    for _ in range(warm):
        fn()
    times, out = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def gen_figures(times: list[float], tokens: int, sequences: int) -> dict:
    s = statistics.median(times)
    return {"seconds": times, "s_per_call": s, "tokens": tokens, "tok_per_s": tokens / s,
            "mean_response_tokens": tokens / sequences}


# ---- child 1: vLLM through rlsys's engine -------------------------------------------------------

def child_vllm(size: str, threads: int, work: Path) -> dict:
    import torch

    from rlsys.models.engine import VLLMEngine
    from rlsys.specs import call_seed, generate_kwargs, role_specs

    cfg, model_dir, prompts = setup(size, threads)
    specs = role_specs(cfg, model_dir)
    engine = VLLMEngine.from_spec(specs.engine)
    step = iter(range(1, 100))

    def call():
        sampling = specs.train_sampling.for_call(call_seed(cfg.seed, next(step), 0))
        return engine.generate(prompts, **generate_kwargs(prompts, sampling), policy_version=0)

    times, groups = timed(call, WARM_GEN, TIMED_GEN)
    rollouts = [r for g in groups for r in g.rollouts]
    torch.save([{"prompt": i, "prompt_ids": r.prompt_token_ids, "response_ids": r.response_token_ids,
                 "logprobs": r.behaviour_logprobs} for i, g in enumerate(groups) for r in g.rollouts],
               work / f"responses-{size}.pt")
    tokens = sum(len(r.response_token_ids) for r in rollouts)
    return {"load_s": engine.load_seconds, **gen_figures(times, tokens, len(rollouts))}


# ---- child 2: transformers generate -----------------------------------------------------------

def child_hf(size: str, threads: int, work: Path) -> dict:
    import torch

    from rlsys.models.forward import render_prompt, suppressed_token_ids
    from rlsys.models.loading import get_tokenizer, load_policy, load_processor, pad_token_id, stop_token_ids
    from rlsys.specs import role_specs

    cfg, model_dir, prompts = setup(size, threads)
    sampling = role_specs(cfg, model_dir).train_sampling
    model, processor = load_policy(model_dir), load_processor(model_dir)
    get_tokenizer(processor).padding_side = "left"
    rows = [p for p in prompts for _ in range(sampling.n)]  # 128 sequences, one batch
    inputs = processor(text=[render_prompt(processor, p) for p in rows],
                       images=[m.to_pil() for p in rows for m in p.images] or None,
                       padding=True, return_tensors="pt")
    eos = stop_token_ids(model_dir, processor)
    width = inputs["input_ids"].shape[1]
    calls = iter(range(100))

    @torch.no_grad()
    def call():
        torch.manual_seed(next(calls))
        return model.generate(**inputs, do_sample=True, temperature=sampling.temperature, top_p=1.0, top_k=0,
                              max_new_tokens=sampling.max_new_tokens, eos_token_id=eos,
                              pad_token_id=pad_token_id(processor),
                              suppress_tokens=suppressed_token_ids(processor))[:, width:]

    times, out = timed(call, WARM_GEN, TIMED_GEN)
    tokens = sum(response_length(row.tolist(), eos) for row in out)
    return gen_figures(times, tokens, len(rows))


def response_length(ids: list[int], eos: list[int]) -> int:
    """Generated tokens up to and including the first EOS (what follows is padding)."""
    for i, t in enumerate(ids):
        if t in eos:
            return i + 1
    return len(ids)


# ---- child 3: the learner update and the floor ------------------------------------------------

def train_samples(prompts, work: Path, size: str):
    """vLLM's responses of the vLLM child as TrainSamples, a fixed seeded +-1 advantage each."""
    import torch

    from rlsys.protocol import TrainSample

    g = torch.Generator().manual_seed(0)
    out = []
    for r in torch.load(work / f"responses-{size}.pt"):
        n_resp, sign = len(r["response_ids"]), float(torch.randint(0, 2, (1,), generator=g)) * 2 - 1
        out.append(TrainSample(input_ids=torch.tensor(r["prompt_ids"] + r["response_ids"]),
                               response_start=len(r["prompt_ids"]), images=list(prompts[r["prompt"]].images),
                               old_logprobs=torch.tensor(r["logprobs"]), advantages=torch.full((n_resp,), sign),
                               group_index=r["prompt"]))
    return out


def floor_step(model, opt, batches: list[dict], temperature: float) -> None:
    from rlsys.models.forward import token_logprobs

    tokens = sum(float(b["response_mask"].sum()) for b in batches)
    for b in batches:
        lp, _, mask = token_logprobs(model, b, temperature=temperature)
        (-(lp * mask).sum() / tokens).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def child_learner(size: str, threads: int, work: Path) -> dict:
    import torch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    from rlsys.learner import PolicyLearner
    from rlsys.models.loading import load_policy
    from rlsys.models.packing import collate_for_forward
    from rlsys.protocol import TrainBatch
    from rlsys.specs import role_specs

    cfg, model_dir, prompts = setup(size, threads)
    samples = train_samples(prompts, work, size)
    spec = role_specs(cfg, model_dir).learner
    learner = PolicyLearner(spec, "gloo")
    torch.set_num_threads(threads)
    update, last = timed(lambda: learner.train_step(TrainBatch(samples=samples)), WARM_STEPS, TIMED_STEPS)
    res = {"update": {"seconds": update, "s": statistics.median(update), "last_metrics": last.as_dict()},
           "settings": learner.applied_settings(), "micro_batch_size": spec.trainer.micro_batch_size,
           "response_tokens": sum(s.response_length for s in samples)}
    model = load_policy(model_dir).train()
    res["params"] = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=spec.trainer.lr)
    mb = spec.trainer.micro_batch_size
    chunks = [samples[i:i + mb] for i in range(0, len(samples), mb)]
    for pack in (True, False):
        t0 = time.perf_counter()
        batches = [collate_for_forward(c, learner.processor, learner.pad_token_id, model, pack=pack) for c in chunks]
        collate_s = time.perf_counter() - t0
        times, _ = timed(lambda: floor_step(model, opt, batches, spec.temperature), WARM_STEPS, TIMED_STEPS)
        fed = sum(b["input_ids"].numel() for b in batches)
        s = statistics.median(times)
        res["packed" if pack else "unpacked"] = {
            "seconds": times, "s": s, "collate_s": collate_s, "tokens_fed": fed, "rows": sum(b["input_ids"].shape[0] for b in batches),
            "gflops": 6 * res["params"] * fed / s / 1e9}
    res["update"]["gflops_packed_tokens"] = 6 * res["params"] * res["packed"]["tokens_fed"] / res["update"]["s"] / 1e9
    return res


CHILDREN = {"vllm": child_vllm, "hf": child_hf, "learner": child_learner}


# ---- the parent: subprocesses, then the report ------------------------------------------------

def child_env(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1",
               VLLM_CPU_OMP_THREADS_BIND="0" if threads == 1 else f"0-{threads - 1}",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
    return env


def run_child(kind: str, size: str, threads: int) -> dict:
    out = WORK / f"{kind}-{size}.json"
    log = WORK / f"{kind}-{size}.log"
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.call([sys.executable, __file__, "--child", kind, "--sizes", size, "--threads", str(threads)],
                             env=child_env(threads), stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    if rc != 0:
        sys.exit(f"{kind} ({size}) failed, rc {rc}; last lines of {log}:\n" + "".join(open(log).readlines()[-30:]))
    res = json.loads(out.read_text())
    res["process_s"], res["loadavg_1min_after"] = time.perf_counter() - t0, os.getloadavg()[0]
    print(f"  {kind:8s} {size}: {res['process_s']:.0f} s", flush=True)
    return res


def git_commit() -> str:
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return sha + (" (dirty)" if dirty else "")


def cpu_name() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def render(data: dict) -> str:
    m = data["meta"]
    lines = ["# Learner and generation against this machine's limit", "",
             f"`{m['command']}` — commit {m['commit']}, {m['date']}; {m['cores']} cores ({m['cpu']}); "
             f"{m['threads']} thread(s) per measurement, each in its own process pinned to the same core(s); "
             f"whole command {m['wall_s']:.0f} s. 1-minute load average after each measurement (other work on "
             "the machine shows here): " + ", ".join(f"{s} {k} {r[k].get('loadavg_1min_after', float('nan')):.1f}"
                                                     for s, r in data["sizes"].items() for k in ("vllm", "hf", "learner"))
             + ".", "",
             "Work: 16 prompts of the synthetic train split × 8 samples, 48 new tokens at most, T = 0.7 "
             "(the default run's step). Median of 3 calls after 1 warm-up call (generation), of 5 steps after "
             "2 warm-up steps (update, floors).", "",
             "## Generation: vLLM (rlsys's engine) vs transformers `generate`", "",
             "| size | params | vLLM tok/s | vLLM s/call | generate tok/s | generate s/call | vLLM / generate "
             "| mean response tokens (vLLM, generate) |", "|---|---|---|---|---|---|---|---|"]
    for size, r in data["sizes"].items():
        v, h = r["vllm"], r["hf"]
        lines.append(f"| {size} | {r['learner']['params'] / 1e6:.2f}M | {v['tok_per_s']:.0f} | {v['s_per_call']:.2f} "
                     f"| {h['tok_per_s']:.0f} | {h['s_per_call']:.2f} | **{v['tok_per_s'] / h['tok_per_s']:.2f}×** "
                     f"| {v['mean_response_tokens']:.1f}, {h['mean_response_tokens']:.1f} |")
    lines += ["", "Tokens counted: each response's tokens up to and including its EOS (no padding). Target: "
              "vLLM faster than `generate` on both sizes.", "",
              "## Learner update vs the floor", "",
              "| size | update s | floor packed s | floor unpacked s | update / floor packed | update / floor unpacked "
              "| tokens fed packed (rows) | tokens fed unpacked (rows) | floor GFLOP/s packed, unpacked | update GFLOP/s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for size, r in data["sizes"].items():
        lr = r["learner"]
        u, p, q = lr["update"]["s"], lr["packed"], lr["unpacked"]
        lines.append(f"| {size} | {u:.3f} | {p['s']:.3f} | {q['s']:.3f} | **{u / p['s']:.2f}×** | {u / q['s']:.2f}× "
                     f"| {p['tokens_fed']} ({p['rows']}) | {q['tokens_fed']} ({q['rows']}) "
                     f"| {p['gflops']:.1f}, {q['gflops']:.1f} | {lr['update']['gflops_packed_tokens']:.1f} |")
    lines += ["", "Target: update ≤ 1.25× the packed floor. Response tokens per step (what the loss covers): "
              + ", ".join(f"{s} {r['learner']['response_tokens']}" for s, r in data["sizes"].items())
              + ". Collating a step's micro-batches once (not in the floor's time): "
              + ", ".join(f"{s} {r['learner']['packed']['collate_s']:.3f} s packed / "
                          f"{r['learner']['unpacked']['collate_s']:.3f} s unpacked" for s, r in data["sizes"].items()) + ".",
              "", "**What the floor is.** The same model weights (a fresh `load_policy`, float32, train mode) and the "
              "learner's own micro-batches (`micro_batch_size` samples each, in the learner's order), built once "
              "by `rlsys.models.packing.collate_for_forward` — packed rows (one shared prompt per group, as the "
              "learner feeds its model) or, for the unpacked floor, plain right-padded sequences (what a trainer "
              "without prompt packing feeds) — then only what any trainer must do: forward through "
              "`token_logprobs` (vision tower, LM, LM head on the response positions, log-softmax at T = 0.7), "
              "loss -(logp · mask).sum() / tokens, backward, and one `torch.optim.AdamW` step per 128 samples. "
              "No DeepSpeed, no entropy, no PPO loss, no metrics, no collate in the timed loop. The update is "
              "`PolicyLearner.train_step` of the default config on the same 128 samples (vLLM's responses, their "
              "behaviour log-probs, a fixed ±1 advantage per sample), collate included. GFLOP/s is 6·N·T with N the "
              "model's parameter count and T the tokens fed (padding included).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report", action="store_true", help="re-render the .md from the .json")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if args.child:
        size = args.sizes[0]
        res = CHILDREN[args.child](size, args.threads, WORK)
        (WORK / f"{args.child}-{size}.json").write_text(json.dumps(res, indent=2, default=str))
        return
    if not args.report:
        t0 = time.time()
        sizes = {}
        for size in args.sizes:
            sizes[size] = {kind: run_child(kind, size, args.threads) for kind in ("vllm", "hf", "learner")}
        meta = {"command": "python bench/learner_roofline.py " + " ".join(sys.argv[1:]), "commit": git_commit(),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
                "cpu": cpu_name(), "threads": args.threads, "wall_s": time.time() - t0}
        OUT_JSON.write_text(json.dumps({"meta": meta, "sizes": sizes}, indent=2, default=str) + "\n")
    OUT_MD.write_text(render(json.loads(OUT_JSON.read_text())))
    print(f"wrote {OUT_MD} and {OUT_JSON}")


if __name__ == "__main__":
    main()
