"""The training loop as named stages. The roles (engines, reward, reference, learner, critic) are
clients from `rlsys.distributed.roles`; this file holds the algorithm's order of work, not Ray."""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rlsys.batching import build_train_batch
from rlsys.config import RunConfig, to_dict
from rlsys.evaluation import EvalResult, evaluate_groups
from rlsys.logging import MetricsLogger, flatten
from rlsys.protocol import Prompt, RolloutGroup, ScoredGroup
from rlsys.recording import RolloutRecorder
from rlsys.sampling import BatchFill, BatchPlan, PromptSampler, ReplaySampler, plan_batch, replay_source
from rlsys.timing import StageTimer


@dataclass
class RunSummary:
    run_dir: str
    steps: int
    eval_before: Optional[EvalResult]
    eval_after: Optional[EvalResult]
    seconds: float


class Driver:
    def __init__(self, cfg: RunConfig, roles, train_prompts: list[Prompt], test_prompts: list[Prompt],
                 run_dir: Path, replay: Optional[ReplaySampler] = None):
        """`replay`: the recorded groups offline / mixed sampling draws from; read from
        `sampling.offline_path` when not given (launch reads it before any actor starts)."""
        self.cfg = cfg
        self.roles = roles
        self.test_prompts = test_prompts[: cfg.eval.max_prompts]
        s = cfg.sampling
        self.plan = plan_batch(s.mode, s.prompts_per_step, s.offline_fraction)
        self.sampler = PromptSampler(train_prompts, s.prompts_per_step, cfg.seed, cfg.data.shuffle)
        self.replay = replay if replay is not None or self.plan.offline == 0 else replay_source(cfg, train_prompts)
        self.run_dir = run_dir
        self.version = 0
        self.step_index = 0
        self.needs_reference = cfg.algorithm.kl_coef > 0
        self.recorder = RolloutRecorder(run_dir / "rollouts")

    # ------------------------------------------------------------------ stages

    def draw(self, need: BatchPlan) -> tuple[list[RolloutGroup], list[Prompt]]:
        """Recorded groups to replay and prompts to generate for, as many as `need` asks."""
        replayed = self.replay.take(need.offline) if need.offline else []
        return replayed, self.sampler.take(need.online)

    def generate(self, prompts: list[Prompt]) -> list[RolloutGroup]:
        return self.roles.rollout.generate(prompts, self.roles.train_sampling) if prompts else []

    def score(self, groups: list[RolloutGroup]) -> list[ScoredGroup]:
        """Rewards, reference log-probs and critic values run concurrently on their actors."""
        rewards = self.roles.reward.score_async(groups)
        ref = self.roles.reference.logprobs_async(groups) if self.needs_reference else None
        values = self.roles.critic.values_async(groups) if self.roles.critic is not None else None
        rewards, ref, values = self.roles.wait(rewards, ref, values)
        return [ScoredGroup(g, r, None if ref is None else ref[i], None if values is None else values[i])
                for i, (g, r) in enumerate(zip(groups, rewards))]

    def advantages(self, scored: list[ScoredGroup]):
        return build_train_batch(scored, self.cfg.algorithm, self.cfg.advantage_estimator, self.version)

    def update(self, batch):
        critic = self.roles.critic.train_async(batch) if self.roles.critic is not None else None
        policy = self.roles.learner.train_async(batch)
        return self.roles.wait(policy, critic)

    def sync(self) -> float:
        self.version += 1
        return self.roles.sync_weights(self.version)

    def collect(self, timer: StageTimer) -> BatchFill:
        """draw -> generate -> score, once; with dynamic sampling, again for the groups dropped,
        until the batch is full or the extra rounds are spent (rlsys/sampling.py)."""
        s = self.cfg.sampling
        fill = BatchFill(self.plan, s.dynamic_sampling, s.max_resample_rounds)
        while (need := fill.request()) is not None:
            with timer.stage("sample"):
                replayed, prompts = self.draw(need)
            with timer.stage("generate"):
                generated = self.generate(prompts)
            with timer.stage("score"):
                # Replayed groups are re-scored with this run's rewards, like generated ones.
                scored = self.score(replayed + generated)
            fill.add(scored[: len(replayed)], offline=True)
            fill.add(scored[len(replayed):], offline=False)
        return fill

    def learn(self, scored: list[ScoredGroup], timer: StageTimer) -> dict[str, float]:
        """advantages -> update -> sync on the step's batch; -> their metrics."""
        with timer.stage("advantages"):
            batch, batch_stats = self.advantages(scored)
        with timer.stage("update"):
            learner_metrics, critic_metrics = self.update(batch)
        with timer.stage("sync"):
            sync_seconds = self.sync()
        return {**flatten("batch", batch_stats), **flatten("learner", learner_metrics),
                **(flatten("critic", critic_metrics) if critic_metrics is not None else {}),
                "sync/seconds": sync_seconds}

    # ------------------------------------------------------------------ one step

    def step(self) -> dict[str, float]:
        """One training step; advances `step_index` (the data positions are the samplers')."""
        self.step_index += 1
        timer = StageTimer()
        done_before = list(self.roles.rollout.prompts_done)
        fill = self.collect(timer)
        # Which engine generated how many of this step's prompts (the balancer's split).
        engines = {f"rollout/engine_{i}_prompts": float(after - before)
                   for i, (before, after) in enumerate(zip(done_before, self.roles.rollout.prompts_done))}
        with timer.stage("record"):
            self.recorder.write(self.step_index, fill.seen)  # dropped groups too: the full record
        row = {**fill.metrics(), **_reward_metrics(fill.seen), **engines}
        if fill.batch:
            row.update(self.learn(fill.batch, timer))
        # else dynamic sampling dropped every group (all rewards equal: nothing to learn), so no
        # update and no sync this step; sampling/batch_groups = 0 records it.
        times = timer.finish()
        row.update({**times, **_throughput(fill, times), "policy/version": self.version,
                    **self.roles.peak_memory_mb()})
        return row

    # ------------------------------------------------------------------ run

    def evaluate(self) -> EvalResult:
        groups = self.roles.rollout.generate(self.test_prompts, self.roles.eval_sampling)
        return evaluate_groups(groups)

    def run(self) -> RunSummary:
        t0 = time.perf_counter()
        cfg = self.cfg
        before = self.evaluate() if cfg.eval.before_and_after else None
        logger = MetricsLogger(cfg, self.run_dir, cfg.total_steps - self.step_index)
        if before is not None:
            logger.log(self.step_index, flatten("eval", before))
        try:
            while self.step_index < cfg.total_steps:
                row = self.step()
                if cfg.eval.every and self.step_index % cfg.eval.every == 0 and self.step_index < cfg.total_steps:
                    row.update(flatten("eval", self.evaluate()))
                logger.log(self.step_index, row)
                if cfg.checkpoint.save_every and self.step_index % cfg.checkpoint.save_every == 0:
                    self.save_checkpoint(self.run_dir / "checkpoints" / f"step_{self.step_index}")
            after = self.evaluate() if cfg.eval.before_and_after else None
            if after is not None:
                logger.log(self.step_index, flatten("eval", after))
        finally:
            logger.close()
        self.save_checkpoint(self.run_dir / "checkpoints" / "final")
        if cfg.checkpoint.export_hf:
            self.roles.learner.export_hf(self.run_dir / "hf_model")
        summary = RunSummary(str(self.run_dir), self.step_index, before, after, time.perf_counter() - t0)
        (self.run_dir / "summary.json").write_text(json.dumps(dataclasses.asdict(summary), indent=2))
        return summary

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, path: Path) -> None:
        """Exact resume state: learner (+critic) weights and optimizer, data position, version."""
        path.mkdir(parents=True, exist_ok=True)
        self.roles.save_checkpoint(path)
        state = {"step": self.step_index, "version": self.version,
                 "sampler": dataclasses.asdict(self.sampler.state),
                 "replay_sampler": dataclasses.asdict(self.replay.state) if self.replay is not None else None,
                 "config": to_dict(self.cfg)}
        (path / "driver_state.json").write_text(json.dumps(state, indent=2))

    def load_checkpoint(self, path: Path) -> None:
        from rlsys.sampling import SamplerState

        state = json.loads((path / "driver_state.json").read_text())
        self.roles.load_checkpoint(path)
        self.step_index, self.version = state["step"], state["version"]
        self.sampler.load_state(SamplerState(**state["sampler"]))
        if self.replay is not None and state.get("replay_sampler"):
            self.replay.load_state(SamplerState(**state["replay_sampler"]))
        self.roles.sync_weights(self.version)


def _throughput(fill: BatchFill, times: dict[str, float]) -> dict[str, float]:
    trained = [r for sg in fill.batch for r in sg.group.rollouts]
    return {"throughput/samples_per_s": len(trained) / times["time/step"],
            "throughput/tokens_per_s": sum(len(r.response_token_ids) for r in trained) / times["time/step"],
            # Engine tokens only (replayed groups were not generated); 0 when nothing was.
            "throughput/gen_tokens_per_s": fill.stats.generated_tokens / max(times.get("time/generate", 0.0), 1e-9)}


def _reward_metrics(scored: list[ScoredGroup]) -> dict[str, float]:
    rewards = [r for sg in scored for r in sg.reward.rewards]
    out = {"reward/mean": sum(rewards) / len(rewards),
           "reward/failures": float(sum(sg.reward.failures for sg in scored))}
    names = scored[0].reward.components.keys()
    for name in names:
        vals = [v for sg in scored for v in sg.reward.components[name]]
        key = {"r1_format": "format_rate"}.get(name, name)
        out[f"reward/{key}"] = sum(vals) / len(vals) if vals else math.nan
    return out
