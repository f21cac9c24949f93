"""Checks on what a registry accepts: face images (Rekognition's rules) and user ids.

Pure: Pillow only. Error texts name the image's location and the rule broken, never its
bytes (biometric data).
"""
from __future__ import annotations

import hashlib
import io
import re
import threading
import unicodedata
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
MAX_USER_ID_CHARS = 128
MAX_EXTERNAL_IMAGE_ID_CHARS = 255

# Reason codes (stable strings, stored in the import history).
UNSUPPORTED_FORMAT = "unsupported_format"
TOO_LARGE = "too_large"
TOO_SMALL = "too_small"
CORRUPT_IMAGE = "corrupt_image"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_EXTERNAL_ID_RE = re.compile(r"[a-zA-Z0-9_.\-:]+")
_EXTERNAL_ID_BAD_RUN = re.compile(r"[^a-zA-Z0-9_.\-:]+")
_READABLE_PREFIX_CHARS = 64
_HASH_HEX_CHARS = 32  # 128 bits of SHA-256: no accidental collisions


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


def validate_user_id(user_id: object) -> str | None:
    """None when `user_id` is acceptable, else why not (without echoing the id)."""
    if not isinstance(user_id, str):
        return f"user id must be a string, not {type(user_id).__name__}"
    if not user_id.strip():
        return "user id is empty"
    if len(user_id) > MAX_USER_ID_CHARS:
        return f"user id is {len(user_id)} characters, over the {MAX_USER_ID_CHARS}-character limit"
    for position, char in enumerate(user_id, start=1):
        category = unicodedata.category(char)
        if category == "Cc":
            return f"user id contains a control character (U+{ord(char):04X}) at position {position}"
        if category == "Cs":
            return f"user id is not valid UTF-8 (lone surrogate at position {position})"
    return None


def external_image_id(user_id: str) -> str:
    """A Rekognition ExternalImageId for `user_id`: deterministic, `[a-zA-Z0-9_.\\-:]+`, <= 255 chars.

    An id that already fits is used as is. Any other gets a readable ASCII prefix plus a hash
    of the full id, so ids that differ only in disallowed characters stay distinct.
    """
    if _EXTERNAL_ID_RE.fullmatch(user_id) and len(user_id) <= MAX_EXTERNAL_IMAGE_ID_CHARS:
        return user_id
    # Accents off ("José" -> "Jose"), then every run of disallowed characters -> "_".
    decomposed = unicodedata.normalize("NFKD", user_id)
    ascii_ish = "".join(c for c in decomposed if not unicodedata.combining(c))
    prefix = _EXTERNAL_ID_BAD_RUN.sub("_", ascii_ish).strip("_")[:_READABLE_PREFIX_CHARS]
    digest = hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_HEX_CHARS]
    return f"{prefix}:{digest}" if prefix else digest
