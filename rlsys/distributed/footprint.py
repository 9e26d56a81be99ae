"""What one step's groups cost the driver in memory and in bytes shipped to actors; the media-store
benchmark (bench/media_memory.py) and its test measure the same thing through `batch_footprint`."""
from __future__ import annotations

from typing import Any, Sequence

from rlsys.batching import build_train_batch
from rlsys.distributed.pending import wait
from rlsys.distributed.clients import scoring_samples
from rlsys.protocol import Prompt, ScoredGroup
from rlsys.specs import SamplingSpec


def inline_bytes(obj: Any) -> int:
    """Bytes `obj` pickles to with every object ref counted as its id only, i.e. what a Ray call
    carries inline, not the objects the refs point to (tensors count their data). Refs are not
    serialized out of band, so measuring pins nothing in the object store."""
    import io
    import pickle

    class _Pickler(pickle.Pickler):
        def persistent_id(self, o):
            return o.hex() if type(o).__name__ == "ObjectRef" and hasattr(o, "hex") else None

    buf = io.BytesIO()
    _Pickler(buf, protocol=5).dump(obj)
    return len(buf.getvalue())


def batch_footprint(roles, cfg, prompts: Sequence[Prompt], g: int, max_new_tokens: int) -> dict:
    """What the driver holds and ships for one step's groups at G = g (generate, score, scoring
    samples, train batch); the media-store benchmark and its test both measure this.

    heap:    tracemalloc bytes still allocated once the step's objects are built (tensor data is
             outside the Python heap); held: the bytes those objects serialize to (tensors
             included, object refs as their ids); shipped: serialized bytes of the step's
             driver<->actor traffic, `shipped_parts` per call; png_bytes_in_groups: image bytes
             inside the groups the engine returned (0 with the store)."""
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    groups = roles.rollout.generate(list(prompts), SamplingSpec(g, 1.0, 1.0, max_new_tokens))
    (rewards,) = wait(roles.reward.score_async(groups))
    samples = scoring_samples(groups)
    batch, _ = build_train_batch([ScoredGroup(x, r) for x, r in zip(groups, rewards)], cfg.algorithm,
                                 cfg.advantage_estimator, 0)
    heap = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    shipped = {"generate_args": inline_bytes(prompts), "generate_reply": inline_bytes(groups),
               "reward_args": inline_bytes(groups), "reference_args": inline_bytes(samples),
               "learner_args": inline_bytes(batch)}
    return {"samples": len(batch.samples), "heap": heap, "held": inline_bytes((groups, samples, batch)),
            "shipped": sum(shipped.values()), "shipped_parts": shipped,
            "png_bytes_in_groups": sum(len(m.png or b"") for x in groups for m in x.prompt.images)}
