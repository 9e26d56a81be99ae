"""rlsys.data.media: decoding from every source, RGB conversion, pixel budget, hashing, dedupe."""
import base64
import hashlib
import io
import random

import pytest
from PIL import Image

from rlsys.data import DataError, MediaCache, decode_image, smart_resize, to_media_item


def _png(size=(56, 56), color=(200, 30, 30), **save_kw) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG", **save_kw)
    return buf.getvalue()


def test_all_sources_give_the_same_item(tmp_path):
    data = _png()
    (tmp_path / "a.png").write_bytes(data)
    b64 = base64.b64encode(data).decode()
    sources = [
        data,
        bytearray(data),
        str(tmp_path / "a.png"),
        tmp_path / "a.png",
        b64,
        "data:image/png;base64," + b64,
        Image.open(io.BytesIO(data)),
        {"bytes": data, "path": None},  # HF datasets Image feature in Parquet
    ]
    items = [to_media_item(s) for s in sources]
    assert len({it.sha256 for it in items}) == 1
    it = items[0]
    assert it.sha256 == hashlib.sha256(it.png).hexdigest()
    assert (it.width, it.height) == (56, 56)
    assert it.to_pil().getpixel((3, 3)) == (200, 30, 30)


def test_relative_path_resolves_against_base_dir(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "x.png").write_bytes(_png())
    assert to_media_item("img/x.png", base_dir=tmp_path).width == 56


def test_transparency_becomes_white_and_modes_become_rgb():
    rgba = Image.new("RGBA", (56, 56), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    img = decode_image(rgba)
    assert img.mode == "RGB"
    assert img.getpixel((5, 5)) == (255, 255, 255)
    assert img.getpixel((0, 0)) == (10, 20, 30)
    assert decode_image(Image.new("L", (8, 8), 128)).getpixel((0, 0)) == (128, 128, 128)


BAD_SOURCES = {
    "missing_file": ("missing.png", "image file 'missing.png' not found"),
    "short_string": ("short", "image file 'short' not found"),
    "bad_data_uri": ("data:image/png;base64,@@@not-base64@@@", "invalid base64"),
    "bad_base64": ("!" * 200, "invalid base64"),
    "garbage_bytes": (b"definitely not an image" * 10, "corrupt or unreadable image bytes"),
    "truncated_png": (_png()[:60], "corrupt or unreadable image bytes"),
    "base64_of_garbage": (base64.b64encode(b"garbage" * 30).decode(),
                          "corrupt or unreadable image bytes"),
    "wrong_type": (12345, "expected an image"),
}


@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_bad_sources_raise_data_error(case, tmp_path):
    src, reason = BAD_SOURCES[case]
    with pytest.raises(DataError) as exc:
        to_media_item(src, base_dir=tmp_path)
    assert reason in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_data_error_message_names_location():
    err = DataError("image file 'x.png' not found", source="data/train.jsonl", row=17,
                    field="images[0]", line=18)
    assert str(err) == "data/train.jsonl: line 18: images[0]: image file 'x.png' not found"
    assert err.where == "data/train.jsonl: line 18: images[0]"
    assert str(DataError("boom").located(source="f.parquet", row=2)) == "f.parquet: row 2: boom"
    assert str(DataError("boom", field="id").located(row=0)) == "row 0: id: boom"
    assert str(DataError("boom")) == "boom"


def test_smart_resize_respects_budget_multiple_and_aspect():
    rng = random.Random(0)
    for _ in range(2000):
        h, w = rng.randint(1, 4000), rng.randint(1, 4000)
        if max(h, w) / min(h, w) > 50:
            continue
        lo, hi = 4 * 28 * 28, rng.choice([64, 256, 1280]) * 28 * 28
        th, tw = smart_resize(h, w, 28, lo, hi)
        assert th % 28 == 0 and tw % 28 == 0 and th > 0 and tw > 0
        assert lo <= th * tw <= hi, (h, w, th, tw)
        # A resized image is a fixed point, so the model's processor will not resize it again.
        assert smart_resize(th, tw, 28, lo, hi) == (th, tw)
        # Aspect ratio kept up to the rounding of each side to the factor.
        assert abs(th / tw - h / w) <= (h / w) * (28 / min(th, tw)) * 2 + 1e-9


def test_smart_resize_other_factor_and_extreme_aspect():
    assert smart_resize(100, 100, factor=14, min_pixels=14 * 14, max_pixels=10**6) == (98, 98)
    with pytest.raises(DataError, match="aspect ratio"):
        smart_resize(10, 3000)


def test_to_media_item_downscales_to_max_pixels():
    item = to_media_item(_png(size=(1000, 700)), max_pixels=64 * 28 * 28)
    assert item.width % 28 == 0 and item.height % 28 == 0
    assert item.width * item.height <= 64 * 28 * 28
    assert item.width > item.height  # landscape stays landscape
    small = to_media_item(_png(size=(20, 30)), min_pixels=56 * 56)
    assert small.width * small.height >= 56 * 56


def test_identical_pixels_dedupe_to_one_item():
    cache = MediaCache()
    # Same pixels, different PNG encodings (compression level): one content hash after re-encode.
    a = to_media_item(_png(compress_level=1), cache=cache)
    b = to_media_item(_png(compress_level=9), cache=cache)
    c = to_media_item(Image.new("RGB", (56, 56), (200, 30, 30)), cache=cache)
    d = to_media_item(_png(color=(0, 0, 255)), cache=cache)
    assert a is b is c  # the cache hands back its canonical instance
    assert a.sha256 != d.sha256
    assert len(cache) == 2 and a.sha256 in cache and cache.get(d.sha256) is d
