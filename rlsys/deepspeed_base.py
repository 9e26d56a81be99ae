"""What the policy and critic learners share: distributed init, the DeepSpeed config built in
code, micro-batch planning that keeps ranks in lock-step, global counts, the optimizer step with
NaN skipping, parameter gathering for weight sync, checkpoints. No Ray here."""
from __future__ import annotations

import math
import warnings
from typing import Any, Iterator, Optional

import torch



def pad_to(rows: list, width: int, value: float = 0.0) -> torch.Tensor:
    """Right-pad 1-D per-sample tensors/lists [R_i] into [N, width] float32 (CPU)."""
    out = torch.full((len(rows), width), value, dtype=torch.float32)
    for i, r in enumerate(rows):
        r = torch.as_tensor(r, dtype=torch.float32).reshape(-1)[:width]
        out[i, : r.numel()] = r
    return out


def lr_lambda(schedule: str, warmup: int, total: int, min_ratio: float = 0.0):
    """LR multiplier as a function of the train step (warmup/total count train steps).
    Warm-up is linear from 1/(warmup+1); decay reaches min_ratio at `total`."""
    if schedule not in ("constant", "cosine", "linear"):
        raise ValueError(f"lr_schedule must be constant|cosine|linear, got {schedule!r}")

    def fn(s: int) -> float:
        if s < warmup:
            return (s + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        p = min(max((s - warmup) / max(total - warmup, 1), 0.0), 1.0)
        if schedule == "linear":
            return 1.0 - (1.0 - min_ratio) * p
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))

    return fn


class DeepSpeedTrainerBase:
    """What the policy and the critic learners share: distributed init, the DeepSpeed config
    built in code, micro-batch planning that keeps ranks in lock-step, global counts,
    the optimizer step with NaN skipping, parameter gathering and checkpoints."""

    def __init__(self, *, zero_stage: int = 2, lr: float = 1e-6, weight_decay: float = 0.0,
                 warmup_steps: int = 0, total_steps: int = 1000, lr_schedule: str = "constant",
                 min_lr_ratio: float = 0.0, grad_clip: float = 1.0, micro_batch_size: int = 1,
                 ppo_epochs: int = 1, mini_batches_per_step: int = 1, dtype: Any = "bfloat16",
                 seed: int = 0, backend: str = "auto", expected_samples_per_step: Optional[int] = None):
        import torch.distributed as dist

        if zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0..3, got {zero_stage}")
        self.zero_stage, self.lr, self.weight_decay, self.grad_clip = zero_stage, lr, weight_decay, grad_clip
        self.micro_batch_size, self.ppo_epochs = micro_batch_size, ppo_epochs
        self.mini_batches_per_step = mini_batches_per_step
        self.torch_dtype = _torch_dtype(dtype)
        self.backend = ("nccl" if torch.cuda.is_available() else "gloo") if backend == "auto" else backend
        self._sched = lr_lambda(lr_schedule, warmup_steps, total_steps, min_lr_ratio)
        self.expected_samples_per_step = expected_samples_per_step
        self.train_steps = 0
        torch.manual_seed(seed)
        # DeepSpeed calls torch's deprecated *_tensor collectives: one FutureWarning per call.
        warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated")
        if not dist.is_initialized():
            import deepspeed

            deepspeed.init_distributed(dist_backend=self.backend)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.comm_device = (torch.device("cuda", torch.cuda.current_device())
                            if self.backend == "nccl" else torch.device("cpu"))

    def ds_config(self) -> dict:
        """The DeepSpeed config. Gradient accumulation is unmanaged (we call step() once per
        mini-batch, after a variable number of micro-batches), so gradient_accumulation_steps
        only feeds DeepSpeed's sample bookkeeping; it is computed from the expected batch."""
        per_rank = -(-(self.expected_samples_per_step or self.micro_batch_size * self.world) // self.world)
        gas = max(1, -(-per_rank // (self.micro_batch_size * self.mini_batches_per_step)))
        bf16 = self.torch_dtype == torch.bfloat16
        return {
            "train_micro_batch_size_per_gpu": self.micro_batch_size,
            "gradient_accumulation_steps": gas,
            "train_batch_size": self.micro_batch_size * gas * self.world,
            "managed_gradient_accumulation": False,
            "gradient_clipping": self.grad_clip,
            "zero_optimization": {"stage": self.zero_stage, "overlap_comm": False,
                                  "contiguous_gradients": True},
            # check_grad_overflow: drop a step whose gradient norm is NaN/inf (NaN-loss skip).
            "bf16": {"enabled": bf16, "check_grad_overflow": True},
            # fp16 (GPU): dynamic loss scaling; an overflow skips the step like a NaN does.
            "fp16": {"enabled": self.torch_dtype == torch.float16, "loss_scale": 0,
                     "initial_scale_power": 16},
            # torch_adam: DeepSpeed's fused Adam is a CUDA JIT build; torch's AdamW works on
            # both CPU and GPU without a compiler.
            "optimizer": {"type": "AdamW", "params": {"lr": self.lr, "betas": [0.9, 0.999],
                          "eps": 1e-8, "weight_decay": self.weight_decay, "torch_adam": True}},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }

    def _init_engine(self, module: torch.nn.Module) -> None:
        import deepspeed

        # No weight decay on biases and norm weights (1-D tensors), as is standard.
        decay = [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim < 2]
        groups = [{"params": decay, "weight_decay": self.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        self.engine, *_ = deepspeed.initialize(
            model=module, model_parameters=[g for g in groups if g["params"]],
            config=self.ds_config())
        self.set_lr_for_step()

    def set_lr_for_step(self) -> float:
        """Set the LR from the train-step counter (no DeepSpeed scheduler): constant within a
        train step, unaffected by skipped optimizer steps, and restored with the counter."""
        lr = self.lr * self._sched(self.train_steps)
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        return lr

    # ------------------------------------------------------------ collectives / planning

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """All-reduce over the learner ranks (the default group); returns a CPU tensor."""
        import torch.distributed as dist

        if self.world == 1:
            return t.clone()
        x = t.to(self.comm_device)
        dist.all_reduce(x, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return x.cpu()

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.world > 1:
            dist.barrier()

    def global_counts(self, samples: list) -> tuple[float, float]:
        """(valid response tokens, sequences with >= 1 token) summed over all ranks."""
        lens = [s.response_length for s in samples]
        g = self.all_reduce(torch.tensor([sum(lens), sum(1 for n in lens if n > 0)], dtype=torch.float64))
        return float(g[0]), float(g[1])

    def plan_micro_batches(self, samples: list, n_mini: int) -> list[list[tuple[list, bool]]]:
        """Split the shard into n_mini mini-batches of micro-batches; -> per mini-batch a list
        of (samples, real). Every rank must run the same number of forward/backward passes
        (ZeRO-3 gathers parameters in forward, ZeRO-2 reduces gradients in backward), so a
        rank with fewer micro-batches adds padding ones (real=False, contribute nothing)."""
        if not samples:
            raise ValueError("every learner rank needs at least one sample in its shard")
        bounds = [round(i * len(samples) / n_mini) for i in range(n_mini + 1)]
        plan = []
        for k in range(n_mini):
            chunk = samples[bounds[k]:bounds[k + 1]]
            plan.append([(chunk[i:i + self.micro_batch_size], True)
                         for i in range(0, len(chunk), self.micro_batch_size)])
        most = self.all_reduce(torch.tensor([len(p) for p in plan], dtype=torch.float64), op="max")
        for p, n in zip(plan, most.tolist()):
            p += [([samples[0]], False)] * (int(n) - len(p))
        return plan

    # ------------------------------------------------------------ optimisation

    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed averages gradients over ranks; our loss is already this rank's share of
        # the global sum, so undo the average. Accumulation scaling is ours too (no gas).
        self.engine.backward(loss * self.world, scale_wrt_gas=False)

    def optimizer_step(self, bad: bool) -> tuple[bool, float]:
        """Take the optimizer step closing a mini-batch; -> (applied, grad norm).
        `bad` (non-finite loss on any rank): ZeRO 1-3 see the poisoned gradient norm and
        drop the step and its grads themselves; stage 0 has no such check, so drop by hand."""
        if bad and self.zero_stage == 0:
            self.engine.zero_grad()
            self.engine.optimizer.zero_grad()
            self.engine._unmanaged_backward_count = 0
            return False, float("nan")
        self.engine.step()
        applied = not getattr(self.engine.optimizer, "overflow", False) and not bad
        norm = self.engine.get_global_grad_norm()
        return applied, float(norm) if norm is not None else float("nan")

    def peak_mem_mb(self) -> float:
        if torch.cuda.is_available() and self.backend == "nccl":
            return torch.cuda.max_memory_allocated() / 2**20
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    # ------------------------------------------------------------ weights / checkpoints

    def gathered_parameters(self, chunk_mb: float = 256.0) -> Iterator[tuple[str, torch.Tensor]]:
        """(module name, full tensor) per parameter; under ZeRO-3 a collective gather a chunk
        at a time, cloned inside the gather (the gathered buffer is freed on exit)."""
        named = list(self.engine.module.named_parameters())
        if self.zero_stage != 3:
            for n, p in named:
                yield n, p.detach()
            return
        import deepspeed

        chunk, size = [], 0
        for i, (n, p) in enumerate(named):
            chunk.append((n, p))
            size += p.ds_numel * p.element_size()
            if size >= chunk_mb * 2**20 or i == len(named) - 1:
                with deepspeed.zero.GatheredParameters([q for _, q in chunk], modifier_rank=None):
                    out = [(m, q.detach().clone()) for m, q in chunk]
                yield from out
                chunk, size = [], 0

    def save_checkpoint(self, ckpt_dir: str) -> None:
        """DeepSpeed state (weights, optimizer) + the train-step counter (which sets the LR)
        and RNG; all ranks call."""
        self.engine.save_checkpoint(ckpt_dir, tag="learner", client_state={
            "train_steps": self.train_steps, "torch_rng": torch.get_rng_state()})

    def load_checkpoint(self, ckpt_dir: str) -> None:
        path, client = self.engine.load_checkpoint(ckpt_dir, tag="learner", load_optimizer_states=True,
                                                   load_lr_scheduler_states=False)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {ckpt_dir!r}")
        self.train_steps = int(client.get("train_steps", 0))
        self.set_lr_for_step()
        if "torch_rng" in client:
            torch.set_rng_state(client["torch_rng"])


def _torch_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32,
             "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"dtype must be one of {sorted(table)}, got {dtype!r}")
    return table[dtype]


def hf_checkpoint_names(model: torch.nn.Module) -> dict[str, str]:
    """Module parameter name -> the name the HF checkpoint uses (what vLLM's loader expects).

    transformers >= 5 may rename keys between the checkpoint and the module tree; its own
    `revert_weight_conversion` (what save_pretrained uses) gives the checkpoint names. Each
    parameter is tagged with its index so renamed keys are matched back exactly; anything
    not renamed 1:1 (merging converters) keeps its module name.
    """
    names = [n for n, _ in model.named_parameters()]
    try:
        from transformers.core_model_loading import revert_weight_conversion

        out = revert_weight_conversion(model, {n: torch.tensor([float(i)]) for i, n in enumerate(names)})
    except Exception:  # older transformers / custom models: module names are checkpoint names
        return {n: n for n in names}
    mapping = {n: n for n in names}
    for new, t in out.items():
        if isinstance(t, torch.Tensor) and t.numel() == 1:
            mapping[names[int(t.item())]] = new
    return mapping
