"""core.rules.images: real images made with Pillow, and hand-built PNG headers for the edge cases."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import pytest
from PIL import Image

from rivbulk_pipeline.core.errors import ImageRejected, RivbulkError
from rivbulk_pipeline.core.rules.images import (
    MAX_IMAGE_BYTES,
    ImageInfo,
    check_image,
    sniff_format,
)

LOCATION = "s3://faces/users/alice.jpg"


def make_image(fmt: str = "PNG", size: tuple[int, int] = (96, 120), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (200, 150, 100)).save(buf, format=fmt)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def handmade_png(width: int, height: int, idat: bytes) -> bytes:
    """A PNG with valid chunk CRCs whatever the pixel data says (8-bit grayscale)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def rejected(image: bytes, location: str = LOCATION) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        check_image(image, location)
    assert isinstance(info.value, RivbulkError)
    assert location in str(info.value)  # the error names the image
    return info.value


# ---- accepted images ----


def test_png_and_jpeg_are_accepted_with_their_info() -> None:
    png = make_image("PNG", (96, 120))
    assert check_image(png, LOCATION) == ImageInfo("PNG", 96, 120, len(png))
    jpeg = make_image("JPEG", (80, 80))
    assert check_image(jpeg, LOCATION) == ImageInfo("JPEG", 80, 80, len(jpeg))


def test_format_comes_from_content_not_from_the_name() -> None:
    png = make_image("PNG")
    # A PNG under a .jpg key is a PNG; a name says nothing.
    assert check_image(png, "s3://b/photo.jpg").format == "PNG"
    assert sniff_format(png) == "PNG"
    assert sniff_format(make_image("JPEG")) == "JPEG"
    gif = make_image("GIF", mode="P")
    err = rejected(gif, "s3://b/photo.png")
    assert err.reason_code == "unsupported_format"
    assert sniff_format(gif) is None


@pytest.mark.parametrize("fmt,mode", [("GIF", "P"), ("BMP", "RGB"), ("WEBP", "RGB"), ("TIFF", "RGB")])
def test_other_image_formats_are_unsupported(fmt: str, mode: str) -> None:
    assert rejected(make_image(fmt, mode=mode)).reason_code == "unsupported_format"


def test_empty_and_non_image_bytes_are_unsupported_and_not_echoed() -> None:
    assert rejected(b"").reason_code == "unsupported_format"
    secret = b"SECRET-FACE-BYTES-0123456789"
    err = rejected(secret)
    assert err.reason_code == "unsupported_format"
    assert "SECRET" not in str(err) and "SECRET" not in err.detail


def test_not_bytes_is_rejected_clearly() -> None:
    err = rejected("a string")  # type: ignore[arg-type]
    assert err.reason_code == "unsupported_format" and "str" in err.detail


# ---- size and dimensions ----


def test_byte_size_limit_is_exact() -> None:
    png = make_image("PNG")
    at_limit = png + b"\0" * (MAX_IMAGE_BYTES - len(png))  # trailing bytes after IEND are ignored
    assert check_image(at_limit, LOCATION).size == MAX_IMAGE_BYTES
    err = rejected(at_limit + b"\0")
    assert err.reason_code == "too_large"
    assert f"{MAX_IMAGE_BYTES + 1:,}" in err.detail


@pytest.mark.parametrize("size", [(79, 80), (80, 79), (1, 1)])
def test_under_80_pixels_either_way_is_too_small(size: tuple[int, int]) -> None:
    err = rejected(make_image("JPEG", size))
    assert err.reason_code == "too_small"
    assert f"{size[0]}x{size[1]}" in err.detail


# ---- undecodable images ----


def test_truncated_png_and_jpeg_are_corrupt() -> None:
    noisy = Image.effect_noise((200, 200), 60).convert("RGB")  # noise: the data cannot be guessed
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        noisy.save(buf, format=fmt)
        whole = buf.getvalue()
        assert check_image(whole, LOCATION).format == fmt
        err = rejected(whole[: len(whole) // 2])
        assert err.reason_code == "corrupt_image"
        assert "truncated" in err.detail


def test_pixel_data_that_passes_verify_but_does_not_decode_is_corrupt() -> None:
    # Every chunk CRC is right, so Pillow's verify() is happy; the IDAT is not zlib data.
    bad = handmade_png(100, 100, b"this is not zlib data at all" * 10)
    with Image.open(io.BytesIO(bad)) as im:
        im.verify()  # no exception: verify() alone is not enough
    assert rejected(bad).reason_code == "corrupt_image"


def test_magic_bytes_then_garbage_is_corrupt() -> None:
    assert rejected(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20).reason_code == "corrupt_image"
    assert rejected(b"\xff\xd8\xff" + b"\x13garbage" * 20).reason_code == "corrupt_image"


@pytest.mark.parametrize("side", [10_000, 20_000])  # 1.1x and 4.5x Pillow's MAX_IMAGE_PIXELS
def test_decompression_bombs_are_rejected_not_decoded(side: int) -> None:
    assert side * side > Image.MAX_IMAGE_PIXELS
    bomb = handmade_png(side, side, zlib.compress(b"\0" * 1000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        err = rejected(bomb)
    assert err.reason_code == "too_large"
    assert "41,943,040-pixel bound" in err.detail and "not decoded" in err.detail


def test_a_bomb_is_still_too_large_when_warnings_are_errors() -> None:
    bomb = handmade_png(10_000, 10_000, zlib.compress(b"\0" * 1000))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert rejected(bomb).reason_code == "too_large"
