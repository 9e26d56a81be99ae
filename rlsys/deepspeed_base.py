"""What the policy and critic learners share: distributed init, the DeepSpeed config built in
code, micro-batch planning that keeps ranks in lock-step, global counts, the optimizer step with
NaN skipping, parameter gathering for weight sync, checkpoints. No Ray here."""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, astuple, dataclass, field, fields
from typing import Any, Callable, Iterator

import torch

from rlsys.algorithms.losses import LOSS_AGGREGATIONS
from rlsys.specs import TrainerSpec


@dataclass
class StepMetrics:
    """What every trainer's step reports besides its own losses (the learner's, the critic's, SFT's
    and the RM trainer's metrics extend it), identical on every rank: gradient norm and learning
    rate of the last optimizer step, optimizer steps skipped for a non-finite loss/gradient, the
    step's seconds and this rank's peak memory (MiB)."""

    grad_norm: float = 0.0
    lr: float = 0.0
    skipped: float = 0.0
    time_s: float = 0.0
    peak_mem_mb: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class MicroSums:
    """Base of a trainer's per-micro-batch sums (float fields, summed over micro-batches and then
    over ranks). `bad`: 1 when the micro-batch's loss was non-finite (the step is dropped)."""

    bad: float = 0.0

    def __add__(self, other: "MicroSums") -> "MicroSums":
        return type(self)(*(a + b for a, b in zip(astuple(self), astuple(other))))


@dataclass
class OptimizerStepSums:
    """One optimizer step: its sums, global over ranks, and the mini-batch's global counts."""

    sums: MicroSums
    tokens: float
    sequences: float


@dataclass
class UpdateResult:
    """What `DeepSpeedTrainerBase.optimize` did: per optimizer step, the reduced sums; how many
    steps were skipped for a non-finite loss; the mean gradient norm of the applied ones."""

    steps: list[OptimizerStepSums] = field(default_factory=list)
    skipped: int = 0
    grad_norm: float = 0.0

    def mean(self, name: str, per_token: bool) -> float:
        """A sum field averaged over optimizer steps (per valid token of each step if asked)."""
        vals = [getattr(s.sums, name) / (max(s.tokens, 1.0) if per_token else 1.0) for s in self.steps]
        return sum(vals) / max(len(vals), 1)


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

    def __init__(self, spec: TrainerSpec, backend: str):
        """`backend`: the collective backend the caller opened the default group with."""
        import torch.distributed as dist

        if spec.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0..3, got {spec.zero_stage}")
        self.spec = spec
        self.zero_stage, self.lr, self.weight_decay = spec.zero_stage, spec.lr, spec.weight_decay
        self.micro_batch_size, self.ppo_epochs = spec.micro_batch_size, spec.ppo_epochs
        self.mini_batches_per_step = spec.mini_batches
        self.torch_dtype = _torch_dtype(spec.dtype)
        self.agg_fn, self.norm_length = LOSS_AGGREGATIONS[spec.loss_agg], spec.norm_length
        self.backend = backend
        self._sched = lr_lambda(spec.lr_schedule, spec.warmup_steps, spec.total_steps)
        self.train_steps = 0
        torch.manual_seed(spec.seed)
        # DeepSpeed calls torch's deprecated *_tensor collectives: one FutureWarning per call.
        warnings.filterwarnings("ignore", message=r".*torch\.distributed\.\w+` is deprecated")
        if not dist.is_initialized():
            import deepspeed

            deepspeed.init_distributed(dist_backend=self.backend)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.comm_device = (torch.device("cuda", torch.cuda.current_device())
                            if self.backend == "nccl" else torch.device("cpu"))

    def load_model(self):
        """The HF model and processor of `spec.model_path`, with gradient checkpointing applied
        when the spec asks for it; -> (model, processor, pad token id)."""
        from rlsys.models.loading import load_policy, load_processor, pad_token_id

        trust = self.spec.trust_remote_code
        processor = load_processor(self.spec.model_path, trust_remote_code=trust)
        # Every rank loads the full weights; ZeRO-3 partitions them in deepspeed.initialize.
        model = load_policy(self.spec.model_path, self.torch_dtype, trust_remote_code=trust)
        if self.spec.gradient_checkpointing:
            # Non-reentrant: works with ZeRO-3 hooks and with inputs that need no grad.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        return model, processor, pad_token_id(processor)

    def applied_settings(self) -> dict:
        """What the live trainer uses, read back from the model and the loss it built (so a test
        sees a spec field take effect, not only arrive)."""
        module = self.engine.module
        return {"rank": self.rank, "world": self.world, "zero_stage": self.zero_stage,
                "gradient_checkpointing": any(getattr(m, "gradient_checkpointing", False) for m in module.modules()),
                "loss_agg": self.agg_fn.__name__}

    def ds_config(self) -> dict:
        """The DeepSpeed config. Gradient accumulation is unmanaged (we call step() once per
        mini-batch, after a variable number of micro-batches), so gradient_accumulation_steps
        only feeds DeepSpeed's sample bookkeeping and is 1."""
        bf16 = self.torch_dtype == torch.bfloat16
        return {
            "train_micro_batch_size_per_gpu": self.micro_batch_size,
            "gradient_accumulation_steps": 1,
            "train_batch_size": self.micro_batch_size * self.world,
            "managed_gradient_accumulation": False,
            # fp32 stage 0 clips in `_clip_stage0` (DeepSpeed's fp32 stage-0 clip discards the
            # norm; its bf16/fp16 optimizers keep it).
            "gradient_clipping": 0.0 if self._own_clip else self.spec.grad_clip,
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
        self._stage0_norm: float | None = None
        if self._own_clip:
            # Runs inside engine.step(), after DeepSpeed's all-reduce of the gradients: every
            # rank clips the same global gradient and keeps its norm for the metrics.
            self.engine.optimizer.register_step_pre_hook(self._clip_stage0)
        self.set_lr_for_step()

    @property
    def _own_clip(self) -> bool:
        return self.zero_stage == 0 and self.torch_dtype == torch.float32

    def _clip_stage0(self, optimizer, args, kwargs) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        max_norm = self.spec.grad_clip if self.spec.grad_clip > 0 else float("inf")
        self._stage0_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))

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

    def optimize(self, samples: list, micro_step: Callable[[list, bool, tuple], MicroSums]) -> UpdateResult:
        """The update loop the policy and the critic share: ppo_epochs x mini-batches optimizer
        steps, each accumulating `micro_step(micro_batch, real, global_counts)` over its
        micro-batches; the sums are all-reduced once per optimizer step."""
        result, norms = UpdateResult(), []
        for _ in range(self.ppo_epochs):
            for mini in self.plan_micro_batches(samples, self.mini_batches_per_step):
                counts = self.global_counts([s for mb, real in mini if real for s in mb])
                local = None
                for mb, real in mini:
                    part = micro_step(mb, real, counts)
                    local = part if local is None else local + part
                sums = self.all_reduce_sums(local)
                applied, norm = self.optimizer_step(bad=sums.bad > 0)
                result.steps.append(OptimizerStepSums(sums, counts[0], counts[1]))
                if applied:
                    norms.append(norm)
                else:
                    result.skipped += 1
        result.grad_norm = sum(norms) / len(norms) if norms else 0.0
        self.train_steps += 1
        return result

    def all_reduce_sums(self, sums: MicroSums) -> MicroSums:
        """Each field summed over ranks, in one collective."""
        values = self.all_reduce(torch.tensor(astuple(sums), dtype=torch.float64)).tolist()
        return type(sums)(**{f.name: v for f, v in zip(fields(sums), values)})

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
        self._stage0_norm = None
        self.engine.step()
        applied = not getattr(self.engine.optimizer, "overflow", False) and not bad
        norm = self._stage0_norm if self._own_clip else self.engine.get_global_grad_norm()
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
