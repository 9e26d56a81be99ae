"""Ray actor of one critic (value model) rank. Launch: `ray.remote(num_cpus=..., num_gpus=...)(CriticActor)`.

Same conventions as LearnerActor: model-running methods are collectives under ZeRO-3.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from actors import init_torch_distributed, set_torch_threads
from rlsys.protocol import TrainerInfo
from rlsys.specs import CriticSpec, DistRank

if TYPE_CHECKING:
    from rlsys.critic import CriticMetrics


class CriticActor:
    def __init__(self, spec: CriticSpec, dist: DistRank):
        set_torch_threads()
        backend = init_torch_distributed(dist, spec.trainer.backend)
        from rlsys.critic import ValueLearner

        self.critic = ValueLearner(spec, backend)

    def ready(self) -> TrainerInfo:
        """Rank, world and the settings the critic applied (rlsys.deepspeed_base.applied_settings)."""
        return TrainerInfo(**self.critic.applied_settings())

    def compute_values(self, samples) -> list:
        """TrainSample-like records -> list of [R_i] float32 value tensors."""
        from rlsys.distributed.media_store import resolve_samples

        return self.critic.compute_values(resolve_samples(samples))

    def train_step(self, batch) -> CriticMetrics:
        """TrainBatch (this rank's shard, with `returns`) -> CriticMetrics."""
        from rlsys.distributed.media_store import resolve_samples

        resolve_samples(batch.samples)  # ref-form images -> bytes (cached per process)
        return self.critic.train_step(batch)

    def save_checkpoint(self, ckpt_dir: str) -> None:
        self.critic.save_checkpoint(ckpt_dir)

    def load_checkpoint(self, ckpt_dir: str) -> None:
        self.critic.load_checkpoint(ckpt_dir)
