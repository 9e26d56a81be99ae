"""Content-addressed media store: every image lives once in the Ray object store, by sha256.

Driver side: `MediaStore.offload(prompts)` puts each distinct image's PNG bytes into the object
store exactly once (`ray.put`, keyed by the image's sha256; the same image in many prompts, or
in the train and the test split, is one object) and returns the prompts with ref-form
MediaItems (`png=None`, `ref=<ObjectRef>`; sha256/width/height kept). The driver then holds
no image bytes, and what it ships to actors, and gets back from them (rollout groups, train
samples), carries ~100-byte references instead of copies of the pixels.

Actor side: `resolve_items` / `resolve_prompts` / `resolve_samples` give back byte-holding
items. Bytes are fetched with one `ray.get` per call for the images not yet in this process's
cache (`ImageCache`: sha256 -> item, LRU, bounded by total PNG bytes; `RLSYS_MEDIA_CACHE_MB`,
default 1024), so a group's G samples, a batch's repeated prompts and the next steps' repeats
fetch nothing again. Items that already hold bytes pass through unchanged, so code that runs
without Ray (warm start, `rlsys eval`, unit tests) works on byte-holding prompts as before.

Lifetime: the driver owns the objects (it `ray.put` them); they stay while the store or any
prompt holding their refs is alive, and actors borrow them through the refs in their arguments.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Mapping, Optional, Sequence

from rlsys.protocol import MediaItem, Prompt, RolloutGroup

DEFAULT_CACHE_MB = 1024.0


# ----------------------------------------------------------------------------- driver side


class MediaStore:
    """sha256 -> object ref of the PNG bytes; each distinct image is `ray.put` once.

    Stats: `len(store)` distinct images stored, `bytes_put` PNG bytes put (each image once).
    """

    def __init__(self) -> None:
        self._items: dict[str, MediaItem] = {}  # sha256 -> the canonical ref-form item
        self.bytes_put = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, sha256: object) -> bool:
        return sha256 in self._items

    def ref_item(self, item: MediaItem) -> MediaItem:
        """The ref-form item of `item` (putting its bytes unless this image is stored already)."""
        with self._lock:
            stored = self._items.get(item.sha256)
            if stored is not None:
                return stored
            if item.png is None:  # ref-form already (from another store): keep its ref
                self._items[item.sha256] = item
                return item
            import ray

            stored = MediaItem(item.sha256, None, item.width, item.height, ref=ray.put(item.png))
            self._items[item.sha256] = stored
            self.bytes_put += len(item.png)
            return stored

    def offload(self, prompts: Sequence[Prompt]) -> list[Prompt]:
        """New Prompt objects whose images are ref-form (prompts without images are returned as
        they are). The caller's prompts are not changed: drop them to free their bytes."""
        out = []
        for p in prompts:
            if p.images and any(m.png is not None for m in p.images):
                p = replace(p, images=[self.ref_item(m) for m in p.images])
            out.append(p)
        return out

    def refs(self) -> list:
        """Object refs of every stored image (e.g. to inspect the object store)."""
        return [m.ref for m in self._items.values()]


def object_store_usage() -> tuple[int, int]:
    """(objects, bytes) in this node's Ray object store (Ray's internal memory-info API)."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    state = get_state_from_address(ray.get_runtime_context().gcs_address)
    stats = get_memory_info_reply(state).store_stats
    return int(stats.num_local_objects), int(stats.object_store_bytes_used)


def rebind_groups(groups: Sequence[RolloutGroup],
                  prompts: Sequence[Prompt] | Mapping[str, Prompt]) -> list[RolloutGroup]:
    """`groups` with each prompt replaced by the prompt of the same uid in `prompts` (e.g. replayed
    groups joined to byte-holding prompts before the store existed, moved to the offloaded ones).
    Groups whose uid is not in `prompts` keep their prompt."""
    by_uid = prompts if isinstance(prompts, Mapping) else {p.uid: p for p in prompts}
    return [g if by_uid.get(g.prompt.uid, g.prompt) is g.prompt else replace(g, prompt=by_uid[g.prompt.uid])
            for g in groups]


# ----------------------------------------------------------------------------- actor side


class ImageCache:
    """sha256 -> byte-holding MediaItem, least recently used first out, bounded by PNG bytes.

    An image larger than the whole budget is not kept. Thread-safe. Counters: `hits`, `misses`
    (lookups), `fetched_bytes` (bytes added after a fetch), `evictions`.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, MediaItem] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = self.evictions = self.fetched_bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, sha256: object) -> bool:
        return sha256 in self._items

    def get(self, sha256: str) -> Optional[MediaItem]:
        with self._lock:
            item = self._items.get(sha256)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(sha256)
            self.hits += 1
            return item

    def put(self, item: MediaItem) -> None:
        if item.png is None:
            raise ValueError(f"image {item.sha256[:12]}: the cache holds byte-holding items only")
        size = len(item.png)
        with self._lock:
            self.fetched_bytes += size
            if size > self.max_bytes:
                return
            old = self._items.pop(item.sha256, None)
            if old is not None:
                self.nbytes -= len(old.png)
            self._items[item.sha256] = item
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.nbytes -= len(evicted.png)
                self.evictions += 1

    def stats(self) -> dict[str, int]:
        return {"items": len(self), "bytes": self.nbytes, "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions, "fetched_bytes": self.fetched_bytes}


_process_cache: Optional[ImageCache] = None
_process_cache_lock = threading.Lock()


def process_cache() -> ImageCache:
    """This process's cache (created on first use; size from RLSYS_MEDIA_CACHE_MB)."""
    global _process_cache
    with _process_cache_lock:
        if _process_cache is None:
            mb = float(os.environ.get("RLSYS_MEDIA_CACHE_MB", DEFAULT_CACHE_MB))
            _process_cache = ImageCache(int(mb * 2**20))
        return _process_cache


def _resolve_lists(lists: Sequence[Sequence[MediaItem]], cache: Optional[ImageCache]) -> list[list[MediaItem]]:
    """Byte-holding versions of several image lists, with one `ray.get` for every image that is
    neither holding bytes nor cached. A list with nothing to resolve comes back as it is."""
    cache = cache if cache is not None else process_cache()
    found: dict[str, MediaItem] = {}  # this call's resolved items (not evicted mid-call)
    missing: dict[str, MediaItem] = {}
    for items in lists:
        for m in items:
            if m.png is not None or m.sha256 in found or m.sha256 in missing:
                continue
            if m.ref is None:
                raise ValueError(f"image {m.sha256[:12]} holds neither bytes nor an object-store reference")
            hit = cache.get(m.sha256)
            if hit is not None:
                found[m.sha256] = hit
            else:
                missing[m.sha256] = m
    if missing:
        import ray

        values = ray.get([m.ref for m in missing.values()])
        for m, png in zip(missing.values(), values):
            png = bytes(png)
            digest = hashlib.sha256(png).hexdigest()
            if digest != m.sha256:
                raise RuntimeError(f"image {m.sha256[:12]}: the object store returned bytes with hash {digest[:12]}")
            item = MediaItem(m.sha256, png, m.width, m.height, ref=m.ref)
            cache.put(item)
            found[m.sha256] = item
    return [items if all(m.png is not None for m in items)
            else [m if m.png is not None else found[m.sha256] for m in items] for items in lists]


def resolve_items(items: Sequence[MediaItem], cache: Optional[ImageCache] = None) -> list[MediaItem]:
    """Byte-holding versions of `items` (a no-op for items that hold bytes)."""
    return list(_resolve_lists([items], cache)[0])


def resolve_prompts(prompts: Sequence[Prompt], cache: Optional[ImageCache] = None) -> list[Prompt]:
    """The prompts with byte-holding images, for the engine. A prompt with nothing to resolve is
    returned as the same object; others are copies (the caller's ref-form prompts stay as they are,
    so groups can be returned with them)."""
    resolved = _resolve_lists([p.images for p in prompts], cache)
    return [p if images is p.images else replace(p, images=images) for p, images in zip(prompts, resolved)]


def resolve_groups(groups: Sequence[RolloutGroup], cache: Optional[ImageCache] = None) -> list[RolloutGroup]:
    """The groups with byte-holding prompt images (resolve_prompts); a group with nothing to
    resolve is the same object, the others are copies (the caller's groups stay ref-form)."""
    prompts = resolve_prompts([g.prompt for g in groups], cache)
    return [g if p is g.prompt else replace(g, prompt=p) for g, p in zip(groups, prompts)]


def resolve_samples(samples: Sequence[Any], cache: Optional[ImageCache] = None) -> Sequence[Any]:
    """TrainSample-like records (`.images`), resolved in place; returns `samples`. Samples that
    shared one image list (a group's G samples) share the one resolved list."""
    lists: dict[int, Sequence[MediaItem]] = {}
    for s in samples:
        lists.setdefault(id(s.images), s.images)
    resolved = dict(zip(lists, _resolve_lists(list(lists.values()), cache)))
    for s in samples:
        s.images = resolved[id(s.images)]
    return samples
