"""Weight-sync buckets hold whole vLLM fused layers; TP engines get their executor and cores
(rlsys/distributed/weight_sync.py, rlsys/models/executor.py; no Ray, no vLLM)."""
from __future__ import annotations

import pytest
import torch

from rlsys.distributed.weight_sync import StreamDigest, bucketize, fused_group, tensors_digest


def _layer(i: int, d: int = 8) -> list:
    p = f"model.language_model.layers.{i}"
    names = [f"{p}.input_layernorm.weight", f"{p}.self_attn.q_proj.weight", f"{p}.self_attn.q_proj.bias",
             f"{p}.self_attn.k_proj.weight", f"{p}.self_attn.k_proj.bias", f"{p}.self_attn.v_proj.weight",
             f"{p}.self_attn.v_proj.bias", f"{p}.self_attn.o_proj.weight", f"{p}.mlp.gate_proj.weight",
             f"{p}.mlp.up_proj.weight", f"{p}.mlp.down_proj.weight"]
    return [(n, torch.randn(d, d) if n.endswith("weight") and "norm" not in n else torch.randn(d)) for n in names]


def test_fused_group_maps_qkv_and_gate_up_to_one_layer():
    assert fused_group("model.layers.3.self_attn.q_proj.weight") == "model.layers.3.self_attn.qkv_proj"
    assert fused_group("model.layers.3.self_attn.v_proj.bias") == "model.layers.3.self_attn.qkv_proj"
    assert fused_group("model.layers.3.mlp.up_proj.weight") == "model.layers.3.mlp.gate_up_proj"
    assert fused_group("model.layers.3.mlp.down_proj.weight") == "model.layers.3.mlp.down_proj"
    assert fused_group("visual.blocks.0.attn.qkv.bias") == "visual.blocks.0.attn.qkv"
    assert fused_group("lm_head.weight") == "lm_head"


@pytest.mark.parametrize("bucket_mb", [1e-6, 300 / 2**20, 1000 / 2**20, 64.0])
def test_buckets_never_split_a_fused_group(bucket_mb):
    named = [nt for i in range(3) for nt in _layer(i)]
    buckets = list(bucketize(iter(named), bucket_mb))
    assert [n for b in buckets for n, _ in b] == [n for n, _ in named]  # order and content kept
    seen = {}
    for k, b in enumerate(buckets):
        for n, _ in b:
            seen.setdefault(fused_group(n), set()).add(k)
    assert all(len(ks) == 1 for ks in seen.values()), seen
    limit = bucket_mb * 2**20
    for b in buckets:  # over the limit only when a single group is bigger than it
        size = sum(t.numel() * t.element_size() for _, t in b)
        assert size <= limit or len({fused_group(n) for n, _ in b}) == 1
    if bucket_mb == 64.0:
        assert len(buckets) == 1


def test_a_group_coming_back_later_is_an_error():
    named = [("m.layers.0.self_attn.q_proj.weight", torch.ones(2)), ("m.layers.0.mlp.down_proj.weight", torch.ones(2)),
             ("m.layers.0.self_attn.k_proj.weight", torch.ones(2))]
    with pytest.raises(ValueError, match="comes after other groups"):
        list(bucketize(named, 64.0))
    assert len(list(bucketize(named, 1e-6, group_key=None))) == 3  # no grouping: one tensor each


def test_stream_digest_equals_tensors_digest():
    named = _layer(0)
    d = StreamDigest()
    assert [n for n, _ in d.wrap(iter(named))] == [n for n, _ in named]
    assert d.hexdigest() == tensors_digest(named) == tensors_digest(reversed(named))


def test_executor_is_explicit():
    from rlsys.models.executor import executor_backend

    assert executor_backend(1) == "uni" and executor_backend(2) == "mp" and executor_backend(4, "ray") == "ray"
    with pytest.raises(ValueError, match="'uni' runs one worker"):
        executor_backend(2, "uni")
    with pytest.raises(ValueError, match="must be one of"):
        executor_backend(2, "external_launcher")


def test_cpu_binding_gives_each_worker_its_own_cores():
    from rlsys.models.executor import cpu_thread_binding

    assert cpu_thread_binding(2, cores=[0, 1]) == "0|1"
    assert cpu_thread_binding(2, cores=[0, 1, 2, 3], cpus=4) == "0,1|2,3"
    assert cpu_thread_binding(2, cores=[0, 1, 2, 3], cpus=2) == "0|1"
    assert cpu_thread_binding(2, cores=[0, 1, 2, 3], cpus=2, slot=1) == "2|3"  # the next engine on the node
    assert cpu_thread_binding(2, cores=[4, 5, 6, 7, 8, 9, 10, 11], cpus=2, slot=5) == "6|7"  # wraps around
    with pytest.raises(ValueError, match="needs a core of its own"):
        cpu_thread_binding(4, cores=[0, 1])


def test_handoff_file_carries_a_bucket_from_shared_memory_and_back():
    """The TP > 1 object-store hand-off (executor.write_handoff -> rlsys_reload_weights_file's load):
    a bucket whose tensors are memoryview-backed, as Ray returns them zero-copy, and that shares
    storage (a tied embedding), comes back equal, from one file in /dev/shm."""
    import os

    from rlsys.models.executor import write_handoff

    raw = bytearray(torch.arange(12, dtype=torch.float32).numpy().tobytes())
    zero_copy = torch.frombuffer(raw, dtype=torch.float32).view(3, 4)
    tied = torch.randn(5, 4)
    bucket = [("model.embed_tokens.weight", tied), ("lm_head.weight", tied),
              ("model.norm.weight", zero_copy[:, 1])]  # a non-contiguous view too
    path = write_handoff(bucket)
    try:
        if os.path.isdir("/dev/shm"):
            assert path.startswith("/dev/shm/")
        back = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    finally:
        os.unlink(path)
    assert [n for n, _ in back] == [n for n, _ in bucket]
    for (_, got), (_, want) in zip(back, bucket):
        assert torch.equal(got, want)
    assert torch.equal(back[2][1], torch.tensor([1.0, 5.0, 9.0]))
