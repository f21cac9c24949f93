"""Checks on what a registry accepts: face images (Rekognition's rules).

Pure: Pillow only. Error texts name the image's location and the rule broken, never its
bytes (biometric data).
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass

from PIL import Image

from ..errors import ImageRejected

MAX_IMAGE_BYTES = 5_242_880  # Rekognition: raw image bytes <= 5 MB
MIN_DIMENSION = 80  # Rekognition: at least 80x80 px
# Pixels an image may declare, checked from its header before decoding. Rekognition states no
# pixel limit for faces, only the 5 MB, and a PNG of one colour can declare any size in a few KB.
# A photograph takes at least about 1 bit per pixel as a JPEG of usable quality (a PNG 8 or
# more), so no real photo within 5 MB has more than 5,242,880 x 8 = 41.9 million pixels: the
# bound refuses nothing the registry could use, and one decode holds at most 168 MB (RGBA).
MAX_IMAGE_PIXELS = MAX_IMAGE_BYTES * 8
# Images decoding at once in this process, whatever the number of threads asking: with
# MAX_IMAGE_PIXELS, decoding holds at most about 2 x 168 MB. Two: the machines have 2 cores.
MAX_CONCURRENT_DECODES = 2
_DECODING = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)

# Reason codes (stable strings, stored in the import history).
UNSUPPORTED_FORMAT = "unsupported_format"
TOO_LARGE = "too_large"
TOO_SMALL = "too_small"
CORRUPT_IMAGE = "corrupt_image"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "PNG" or "JPEG" (Pillow's format names)
    width: int
    height: int
    size: int  # bytes


def sniff_format(image: bytes) -> str | None:
    """The image format from its magic bytes ("PNG" / "JPEG"), None for anything else."""
    if image.startswith(_PNG_MAGIC):
        return "PNG"
    if image.startswith(_JPEG_MAGIC):
        return "JPEG"
    return None


def check_image(image: bytes, location: str) -> ImageInfo:
    """Check an image as Rekognition would, decoding it fully; raise `ImageRejected` if it fails.

    `location` (e.g. an s3:// URI) is only used to name the image in the error.
    """
    if not isinstance(image, (bytes, bytearray, memoryview)):
        raise ImageRejected(UNSUPPORTED_FORMAT, f"{location}: image is a {type(image).__name__}, not bytes")
    data = bytes(image)
    fmt = sniff_format(data)
    if fmt is None:
        what = "empty" if not data else "neither PNG nor JPEG by content (magic bytes)"
        raise ImageRejected(UNSUPPORTED_FORMAT, f"{location}: image is {what}; only PNG and JPEG are supported")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageRejected(
            TOO_LARGE, f"{location}: image is {len(data):,} bytes, over the {MAX_IMAGE_BYTES:,}-byte limit"
        )
    try:
        # formats=[fmt]: never let Pillow try other (less audited) decoders on this input.
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            width, height = im.size
            _check_dimensions(width, height, location)  # from the header: nothing decoded yet
            with _DECODING:
                im.load()  # a real decode: verify() alone misses broken pixel data
    except ImageRejected:
        raise
    # Over 2x MAX_IMAGE_PIXELS Pillow refuses at open(); the warning is raised only when warnings are errors.
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected(
            TOO_LARGE,
            f"{location}: image declares more pixels than Pillow's decompression-bomb limit, over the"
            f" {MAX_IMAGE_PIXELS:,}-pixel bound; it was not decoded",
        ) from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad data
        # Pillow's messages may quote bytes of the file: keep only the kind of failure.
        state = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageRejected(
            CORRUPT_IMAGE, f"{location}: {fmt} image cannot be decoded: it is {state} ({type(exc).__name__})"
        ) from None
    return ImageInfo(format=fmt, width=width, height=height, size=len(data))


def _check_dimensions(width: int, height: int, location: str) -> None:
    if width < MIN_DIMENSION or height < MIN_DIMENSION:
        raise ImageRejected(
            TOO_SMALL,
            f"{location}: image is {width}x{height} px, under the {MIN_DIMENSION}x{MIN_DIMENSION} px minimum",
        )
    # Ours is under Pillow's own bomb limit (89.5 M pixels, which it only warns about below 2x).
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageRejected(
            TOO_LARGE,
            f"{location}: image is {width}x{height} px ({width * height:,} pixels), over the {MAX_IMAGE_PIXELS:,}-pixel"
            " bound (more than any photograph within 5 MB holds); it was not decoded",
        )
