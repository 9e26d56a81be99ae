"""rlsys.distributed.media_store without Ray: the per-process image cache, the no-op resolution of
byte-holding items (what code outside Ray relies on), ref-form items refusing to decode, and
re-joining replayed groups to offloaded prompts. The object-store path (ray.put once, fetch once
per process) is tested with a real Ray in tests/integration/test_media_store.py."""
import hashlib
import io

import pytest
from PIL import Image

from rlsys.distributed.media_store import (
    ImageCache, MediaStore, rebind_groups, resolve_items, resolve_prompts, resolve_samples,
)
from rlsys.protocol import MediaItem, Prompt, Rollout, RolloutGroup, TrainSample


def _item(color=(10, 20, 30), size=(56, 56)) -> MediaItem:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    png = buf.getvalue()
    return MediaItem(hashlib.sha256(png).hexdigest(), png, *size)


def _fake(name: str, nbytes: int) -> MediaItem:
    """A byte-holding item of a given size (the cache only looks at sha256 and len(png))."""
    return MediaItem(name, b"\0" * nbytes, 56, 56)


def test_cache_is_lru_bounded_by_bytes():
    cache = ImageCache(max_bytes=250)
    a, b, c = _fake("a", 100), _fake("b", 100), _fake("c", 100)
    cache.put(a)
    cache.put(b)
    assert cache.get("a") is a  # a is now the most recently used
    cache.put(c)  # 300 > 250: the least recently used (b) goes
    assert "b" not in cache and cache.get("a") is a and cache.get("c") is c
    assert cache.nbytes == 200 and len(cache) == 2
    assert cache.get("b") is None
    assert cache.stats() == {"items": 2, "bytes": 200, "hits": 3, "misses": 1, "evictions": 1,
                             "fetched_bytes": 300}


def test_cache_skips_an_image_larger_than_the_budget_and_replaces_in_place():
    cache = ImageCache(max_bytes=100)
    cache.put(_fake("big", 101))
    assert "big" not in cache and cache.nbytes == 0
    cache.put(_fake("x", 60))
    cache.put(_fake("x", 40))  # same hash again: replaced, not counted twice
    assert cache.nbytes == 40 and len(cache) == 1
    with pytest.raises(ValueError, match="byte-holding items only"):
        cache.put(MediaItem("r", None, 56, 56, ref="not-a-ref"))


def test_resolving_byte_holding_items_is_a_no_op():
    cache = ImageCache(max_bytes=1 << 20)
    img = _item()
    prompts = [Prompt("p:0", [], [img]), Prompt("p:1", [])]
    assert resolve_prompts(prompts, cache)[0] is prompts[0]  # the same objects, nothing fetched
    assert resolve_prompts(prompts, cache)[1] is prompts[1]
    assert resolve_items([img], cache)[0] is img
    shared = [img]
    samples = [TrainSample([1, 2], 1, shared, None, None) for _ in range(3)]
    assert resolve_samples(samples, cache) is samples and all(s.images is shared for s in samples)
    assert cache.stats()["misses"] == 0 and len(cache) == 0


def test_ref_form_item_refuses_to_decode_and_names_the_fix():
    img = _item()
    ref_form = MediaItem(img.sha256, None, img.width, img.height, ref=object())
    with pytest.raises(RuntimeError, match="resolve_items / resolve_prompts / resolve_samples"):
        ref_form.to_pil()
    assert img.to_pil().getpixel((0, 0)) == (10, 20, 30)
    # Identity is the content hash: the two forms of one image compare (and hash) equal.
    assert ref_form == img and hash(ref_form) == hash(img)
    assert "png" not in repr(ref_form) and "ref" not in repr(ref_form)


def test_an_item_with_neither_bytes_nor_ref_is_an_error():
    with pytest.raises(ValueError, match="neither bytes nor an object-store reference"):
        resolve_items([MediaItem("ab" * 32, None, 56, 56)], ImageCache(1 << 20))


def test_offload_leaves_text_only_prompts_and_callers_prompts_alone():
    store = MediaStore()
    text_only = Prompt("t:0", [{"role": "user", "content": "hi"}])
    assert store.offload([text_only])[0] is text_only and len(store) == 0 and store.bytes_put == 0


def test_rebind_groups_moves_replayed_groups_to_the_offloaded_prompts():
    img = _item()
    byte_prompt = Prompt("p:0", [], [img], answer="1")
    ref_prompt = Prompt("p:0", [], [MediaItem(img.sha256, None, 56, 56, ref=object())], answer="1")
    other = Prompt("q:0", [])
    rollout = Rollout([1], [2], "x", [-0.1], "stop", 0)
    groups = [RolloutGroup(byte_prompt, [rollout]), RolloutGroup(other, [rollout])]
    out = rebind_groups(groups, [ref_prompt])
    assert out[0].prompt is ref_prompt and out[0].rollouts is groups[0].rollouts
    assert out[1] is groups[1]  # uid not in the offloaded prompts: unchanged
