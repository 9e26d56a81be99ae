"""Images: decode from any common source, resize to the model's pixel budget, content-hash.

Every image that enters the system goes through `to_media_item`, so each one is decoded once,
converted to RGB, resized so that both sides are multiples of `factor` and the area lies in
[min_pixels, max_pixels] (Qwen2.5-VL's `smart_resize` rule, so its processor leaves the image
as it is), PNG-encoded (lossless: every consumer decodes the same pixels) and sha256-hashed.

Accepted sources (`decode_image`):
  * PIL.Image.Image
  * bytes / bytearray / memoryview: encoded image file contents (PNG, JPEG, ...)
  * str / os.PathLike: a file path (relative paths resolve against `base_dir`), a
    ``data:image/...;base64,...`` URI, or a bare base64 string
  * dict with "bytes" and/or "path" (how HF `datasets` stores an Image feature in Parquet)

How a plain string is read: an existing file wins; otherwise a string ending in an image
extension, or too short to hold any image (< 80 chars), is a missing file; otherwise base64.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import os
import threading
from pathlib import Path
from typing import Any, Optional

from PIL import Image

from rlsys.data.errors import DataError
from rlsys.protocol import MediaItem

# Qwen2.5-VL: 14 px patches merged 2x2 -> one visual token per 28x28 px.
DEFAULT_FACTOR = 28
DEFAULT_MIN_PIXELS = 4 * 28 * 28  # 56x56, the processor's own default floor
DEFAULT_MAX_PIXELS = 1280 * 28 * 28  # the processor's own default ceiling
MAX_ASPECT_RATIO = 200  # the processor refuses more extreme images; fail early instead

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
# A 1x1 PNG is ~67 bytes = ~90 base64 chars: anything shorter cannot be a base64 image.
_MIN_BASE64_CHARS = 80


def _open_bytes(data: bytes) -> Image.Image:
    """Fully decode encoded image bytes (load() forces truncated files to fail here)."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img
    except Image.DecompressionBombError as e:
        raise DataError(f"image too large to decode safely ({e})") from e
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise DataError(f"corrupt or unreadable image bytes ({type(e).__name__}: {e})") from e


def _decode_base64(text: str, what: str) -> bytes:
    payload = "".join(text.split())  # tolerate line-wrapped base64
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DataError(f"invalid base64 in {what} ({e})") from e


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decode_string(text: str, base_dir: Optional[Path]) -> Image.Image:
    if text.startswith("data:"):
        header, sep, payload = text.partition(",")
        if not sep or ";base64" not in header:
            raise DataError(f"data URI is not base64-encoded: '{_short(text)}'")
        return _open_bytes(_decode_base64(payload, "data URI"))
    path = Path(text)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    # os.path.isfile, unlike Path.is_file, returns False on any OSError (e.g. a base64 string
    # too long to be a file name) instead of raising.
    if len(text) < 4096 and os.path.isfile(path):
        return _open_bytes(_read_file(path, text))
    if text.lower().endswith(IMAGE_SUFFIXES) or len(text) < _MIN_BASE64_CHARS:
        raise DataError(f"image file '{text}' not found")
    return _open_bytes(_decode_base64(text, "image string"))


def _read_file(path: Path, shown: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"image file '{shown}' unreadable ({e})") from e


def decode_image(src: Any, *, base_dir: Optional[os.PathLike] = None) -> Image.Image:
    """Decode `src` (see module docstring) to an RGB PIL image; raise DataError if impossible."""
    base = Path(base_dir) if base_dir is not None else None
    if isinstance(src, Image.Image):
        img = src
    elif isinstance(src, (bytes, bytearray, memoryview)):
        img = _open_bytes(bytes(src))
    elif isinstance(src, os.PathLike):
        img = _decode_string(os.fspath(src), base)
    elif isinstance(src, str):
        if not src.strip():
            raise DataError("empty image string")
        img = _decode_string(src, base)
    elif isinstance(src, dict) and ("bytes" in src or "path" in src):
        if src.get("bytes") is not None:
            img = _open_bytes(bytes(src["bytes"]))
        elif src.get("path"):
            img = _decode_string(str(src["path"]), base)
        else:
            raise DataError("image dict has neither 'bytes' nor 'path'")
    else:
        raise DataError(
            f"expected an image (path, bytes, base64 string or PIL image), got {type(src).__name__}"
        )
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB copy of `img`; transparency is composited on white (dropping alpha would leave
    whatever colour hides under transparent pixels, often black)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def smart_resize(
    height: int,
    width: int,
    factor: int = DEFAULT_FACTOR,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """Target (height, width): multiples of `factor`, area within the budget, aspect kept.

    Same rule as Qwen2.5-VL's image processor, so a resized image is a fixed point of it.
    """
    if height <= 0 or width <= 0:
        raise DataError(f"image has an empty size {width}x{height}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise DataError(f"aspect ratio of {width}x{height} exceeds {MAX_ASPECT_RATIO}")
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels={min_pixels} > max_pixels={max_pixels}")
    h = round(height / factor) * factor  # may be 0 for tiny sides: the min_pixels branch fixes it
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def encode_png(img: Image.Image) -> bytes:
    """Deterministic PNG bytes (fixed settings, no metadata), so equal pixels hash equal."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6, optimize=False)
    return buf.getvalue()


class MediaCache:
    """Content hash -> MediaItem, so identical images are held (and shipped) once.

    Also remembers which raw inputs already produced which item, so an image file that many
    rows reference is decoded and resized only once. Thread-safe; cheap to share between
    train and test loads.
    """

    def __init__(self) -> None:
        self._items: dict[str, MediaItem] = {}
        self._by_source: dict[tuple, str] = {}
        self._lock = threading.Lock()

    def add(self, item: MediaItem) -> MediaItem:
        """Store `item` unless an equal one is stored; return the stored (canonical) one."""
        with self._lock:
            return self._items.setdefault(item.sha256, item)

    def get(self, sha256: str) -> Optional[MediaItem]:
        return self._items.get(sha256)

    def _lookup_source(self, key: tuple) -> Optional[MediaItem]:
        sha = self._by_source.get(key)
        return self._items.get(sha) if sha is not None else None

    def _remember_source(self, key: tuple, item: MediaItem) -> None:
        with self._lock:
            self._by_source[key] = item.sha256

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, sha256: object) -> bool:
        return sha256 in self._items

    def items(self) -> list[MediaItem]:
        return list(self._items.values())


def _source_key(src: Any, base_dir: Optional[os.PathLike], budget: tuple) -> Optional[tuple]:
    """A cheap identity for raw inputs worth memoising (bytes and strings); None otherwise."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return ("b", hashlib.sha256(bytes(src)).hexdigest(), budget)
    if isinstance(src, (str, os.PathLike)):
        text = os.fspath(src)
        if len(text) > 4096:  # base64 payloads: hash rather than keep them as dict keys
            text = "sha:" + hashlib.sha256(text.encode()).hexdigest()
        return ("s", text, str(base_dir), budget)
    return None


def to_media_item(
    src: Any,
    *,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    factor: int = DEFAULT_FACTOR,
    base_dir: Optional[os.PathLike] = None,
    cache: Optional[MediaCache] = None,
) -> MediaItem:
    """Decode, resize to the pixel budget, PNG-encode and hash one image.

    With a `cache`, the returned item is the cache's canonical instance for its hash.
    Raises DataError (without row/field; the caller adds them via `DataError.located`).
    """
    budget = (min_pixels, max_pixels, factor)
    key = _source_key(src, base_dir, budget) if cache is not None else None
    if key is not None:
        hit = cache._lookup_source(key)
        if hit is not None:
            return hit
    img = decode_image(src, base_dir=base_dir)
    h, w = smart_resize(img.height, img.width, factor, min_pixels, max_pixels)
    if (w, h) != img.size:
        img = img.resize((w, h), Image.BICUBIC)  # bicubic: what the Qwen processor uses
    png = encode_png(img)
    item = MediaItem(sha256=hashlib.sha256(png).hexdigest(), png=png, width=w, height=h)
    if cache is not None:
        item = cache.add(item)
        if key is not None:
            cache._remember_source(key, item)
    return item
