"""Ray actor of one policy-learner rank. Launch: `ray.remote(num_cpus=..., num_gpus=...)(LearnerActor)`.

Every method that runs or gathers the model is a collective under ZeRO-3: the driver calls
it on all ranks at once (each with its own shard) and gets the results together.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from actors import free_port, init_torch_distributed, node_id, node_ip, set_torch_threads
from rlsys.protocol import SyncStats, TrainerInfo
from rlsys.specs import DistRank, LearnerSpec

if TYPE_CHECKING:
    from rlsys.learner import LearnerMetrics
    from rlsys.sft import SFTMetrics


class LearnerActor:
    def __init__(self, spec: LearnerSpec, dist: DistRank):
        self.torch_threads = set_torch_threads()
        backend = init_torch_distributed(dist, spec.trainer.backend)
        from rlsys.learner import PolicyLearner

        self.rank = dist.rank
        self.learner = PolicyLearner(spec, backend)
        self.sender = None

    def ready(self) -> TrainerInfo:
        """Rank, world, node, torch threads and the settings the learner applied (applied_settings)."""
        return TrainerInfo(**self.learner.applied_settings(), node_id=node_id(), torch_threads=self.torch_threads)

    def policy_version(self) -> int:
        """Version of the weights this rank holds: one per train_step, as the driver counts syncs."""
        return self.learner.train_steps

    def train_step(self, batch) -> LearnerMetrics:
        """TrainBatch (this rank's shard) -> LearnerMetrics (same on all ranks)."""
        from rlsys.distributed.media_store import resolve_samples

        resolve_samples(batch.samples)  # ref-form images -> bytes (cached per process)
        return self.learner.train_step(batch)

    def sft_step(self, batch) -> SFTMetrics:
        """TrainBatch of demonstrations (this rank's shard) -> SFTMetrics (same on all ranks)."""
        from rlsys.distributed.media_store import resolve_samples

        resolve_samples(batch.samples)
        return self.learner.sft_step(batch)

    def compute_logprobs(self, samples) -> list:
        from rlsys.distributed.media_store import resolve_samples

        return self.learner.compute_logprobs(resolve_samples(samples))

    def save_checkpoint(self, ckpt_dir: str) -> None:
        self.learner.save_checkpoint(ckpt_dir)

    def load_checkpoint(self, ckpt_dir: str) -> None:
        self.learner.load_checkpoint(ckpt_dir)

    def export_hf(self, out_dir: str) -> None:
        self.learner.export_hf(out_dir)

    # ---- weight sync: rank 0 sends; the other ranks only take part in ZeRO-3 gathers

    def weight_sync_address(self) -> tuple[str, int]:
        """(host, free port) on this node for the weight-sync group's store (call on rank 0)."""
        host = node_ip()
        return host, free_port(host)

    def init_weight_sync(self, host: str, port: int, world_size: int, backend: str, bucket_mb: float) -> None:
        """Rank 0 opens the sender; blocks until all receivers joined, so the driver starts
        this and every receiver's init concurrently."""
        if self.rank == 0:
            from rlsys.distributed.weight_sync import WeightSyncSender

            self.sender = WeightSyncSender(host, port, world_size, backend=backend, bucket_mb=bucket_mb)

    def sync_weights(self, version: int) -> Optional[SyncStats]:
        """Broadcast the current weights as `version` (all ranks call; rank 0 returns stats)."""
        named = self.learner.named_parameters_for_sync()
        if self.sender is None:
            for _ in named:  # take part in the gathers
                pass
            return None
        return self.sender.send(named, version)

    def weight_bucket_refs(self, bucket_mb: float) -> list:
        """Lean object-store path: rank 0 copies one bucket (whole fused layers) at a time to CPU
        and `ray.put`s it once; returns the buckets' ObjectRefs (others: []). The caller hands the
        refs to the engines, which pull each bucket themselves: no process but this one and each
        engine ever holds the weights, and this one holds one bucket at a time."""
        import ray

        from rlsys.distributed.weight_sync import bucketize

        named = self.learner.named_parameters_for_sync()
        if self.rank != 0:
            for _ in named:
                pass
            return []
        refs = []
        for b in bucketize(named, bucket_mb):
            refs.append(ray.put([(n, t.detach().cpu().clone()) for n, t in b]))
        return refs

    def params_digest(self) -> str:
        """sha256 of all (HF name, full tensor): compare with a receiver's digest."""
        from rlsys.distributed.weight_sync import tensors_digest

        return tensors_digest(self.learner.named_parameters_for_sync())
