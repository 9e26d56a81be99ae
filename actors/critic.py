"""Ray actor of one critic (value model) rank. Launch: `ray.remote(num_cpus=..., num_gpus=...)(CriticActor)`.

Same conventions as LearnerActor: model-running methods are collectives under ZeRO-3.
"""
from __future__ import annotations

from typing import Optional

from actors import init_torch_distributed


class CriticActor:
    """critic_kwargs: ValueLearner keyword arguments (value_clip, zero_stage, lr, ...)."""

    def __init__(self, rank: int, world_size: int, master_addr: str, master_port: int,
                 model_path: str, critic_kwargs: Optional[dict] = None):
        kwargs = dict(critic_kwargs or {})
        kwargs["backend"] = init_torch_distributed(rank, world_size, master_addr, master_port,
                                                   kwargs.get("backend", "auto"))
        from rlsys.critic import ValueLearner

        self.critic = ValueLearner(model_path, **kwargs)

    def ready(self) -> dict:
        return {"rank": self.critic.rank, "world": self.critic.world}

    def compute_values(self, samples) -> list:
        """TrainSample-like records -> list of [R_i] float32 value tensors."""
        from rlsys.distributed.media_store import resolve_samples

        return self.critic.compute_values(resolve_samples(samples))

    def train_step(self, batch):
        """TrainBatch (this rank's shard, with `returns`) -> CriticMetrics."""
        from rlsys.distributed.media_store import resolve_samples

        resolve_samples(batch.samples)  # ref-form images -> bytes (cached per process)
        return self.critic.train_step(batch)

    def save_checkpoint(self, ckpt_dir: str) -> None:
        self.critic.save_checkpoint(ckpt_dir)

    def load_checkpoint(self, ckpt_dir: str) -> None:
        self.critic.load_checkpoint(ckpt_dir)
