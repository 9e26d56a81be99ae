"""Ray actor of one reward-model learner rank (`rlsys train-rm`, rlsys/reward_training.py).
Started by launch/roles.py `start_learners`, one per rank with its DistRank.

Every method that runs or gathers the model is a collective under ZeRO-3: the driver calls it
on all ranks at once (each with its own shard of pairs) and gets the results together.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from actors import init_torch_distributed, node_id, set_torch_threads
from rlsys.protocol import TrainerInfo
from rlsys.specs import DistRank, RMTrainerSpec

if TYPE_CHECKING:
    import torch

    from rlsys.reward_training import RMMetrics


def _resolve(pairs: list) -> list:
    """Ref-form images of the pairs' samples -> bytes (cached per process)."""
    from rlsys.distributed.media_store import resolve_samples

    resolve_samples([s for p in pairs for s in (p.chosen, p.rejected)])
    return pairs


class RMLearnerActor:
    def __init__(self, spec: RMTrainerSpec, dist: DistRank):
        set_torch_threads()
        backend = init_torch_distributed(dist, spec.trainer.backend)
        from rlsys.reward_training import RewardModelTrainer

        self.rank = dist.rank
        self.trainer = RewardModelTrainer(spec.trainer, backend)

    def ready(self) -> TrainerInfo:
        """Rank, world, node and the settings the trainer applied (applied_settings)."""
        return TrainerInfo(**self.trainer.applied_settings(), node_id=node_id())

    def bt_step(self, pairs: list) -> RMMetrics:
        """This rank's EncodedPairs of one step -> RMMetrics (the same on all ranks)."""
        return self.trainer.bt_step(_resolve(pairs))

    def pair_scores(self, pairs: list) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's EncodedPairs -> (chosen [N], rejected [N]) CPU score tensors."""
        return self.trainer.pair_scores(_resolve(pairs))

    def export(self, out_dir: str) -> None:
        """Write the RM directory (rank 0 writes; all ranks call)."""
        self.trainer.export(out_dir)
