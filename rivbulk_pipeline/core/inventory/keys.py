"""Vectorised URL encoding and decoding of object keys held in Arrow string arrays.

S3 Inventory CSV writes keys the way `urllib.parse.quote_plus` does (space as '+');
S3 Batch Operations manifests want them the way `quote(key, safe='/')` does (space as
'%20'). Inventories hold millions of keys, so both directions work on the arrays'
buffers with numpy instead of calling the stdlib once per row; the stdlib stays the
reference they are tested against.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# hex digit value per byte, -1 for a byte that is not an ASCII hex digit
_HEX_VALUE = np.full(256, -1, dtype=np.int16)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_VALUE[_c] = _i
    _HEX_VALUE[ord(chr(_c).upper())] = _i
_HEX_UPPER = np.frombuffer(b"0123456789ABCDEF", dtype=np.uint8)

# bytes that `quote(key, safe='/')` leaves as they are
_QUOTE_SAFE = np.zeros(256, dtype=bool)
_QUOTE_SAFE[np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/", dtype=np.uint8)] = (
    True
)

# A key holding one of these was not produced by URL encoding: a space, a non-ASCII
# character, or a '%' that does not start a %XX escape.
NOT_URL_ENCODED_RE = r"(?s) |[^\x00-\x7f]|%([^0-9A-Fa-f]|[0-9A-Fa-f]([^0-9A-Fa-f]|$)|$)"
PERCENT_ESCAPE_RE = r"%[0-9A-Fa-f]{2}"


def _as_string_array(arr: pa.Array | pa.ChunkedArray) -> pa.StringArray:
    """One contiguous `string` (int32 offsets) array, whatever chunking or width came in."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], pa.string())
    if not pa.types.is_string(arr.type):
        arr = arr.cast(pa.string())
    return arr


def string_buffers(arr: pa.StringArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets rebased to 0 as int64, the bytes they index) of a string array; no copy of the bytes."""
    _, offsets_buf, data_buf = arr.buffers()
    if offsets_buf is None:  # an empty array may have no buffers at all
        return np.zeros(1, np.int64), np.zeros(0, np.uint8)
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1].astype(np.int64)
    if data_buf is None:  # every value empty or null
        return offsets - offsets[0], np.zeros(0, np.uint8)
    data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0] : offsets[-1]]
    return offsets - offsets[0], data


def _from_buffers(offsets: np.ndarray, data: np.ndarray, typ: pa.DataType = pa.string()) -> pa.Array:
    return pa.Array.from_buffers(
        typ, len(offsets) - 1, [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(np.ascontiguousarray(data))]
    )


def unquote_plus_array(arr: pa.Array | pa.ChunkedArray) -> pa.StringArray:
    """`urllib.parse.unquote_plus` applied to every string of `arr` (nulls stay null).

    '+' becomes a space, then each '%' followed by two hex digits becomes that byte;
    anything else ('%zz', a lone '%') is left as is. Rows whose decoded bytes are not
    valid UTF-8 get exactly what `unquote_plus` gives them (U+FFFD replacements).
    """
    arr = _as_string_array(arr)
    offsets, data = string_buffers(arr)
    plus = data == 0x2B
    row, pct, value = _percent_escapes(offsets, data)
    if not len(pct) and not plus.any():
        return arr  # nothing to decode: most keys of most inventories
    out = np.where(plus, np.uint8(0x20), data)
    if len(pct):
        out[pct] = value
        # drop each escape's two hex digits; every row shrinks by 2 bytes per escape
        keep = np.ones(len(out), dtype=bool)
        keep[pct + 1] = False
        keep[pct + 2] = False
        out = out[keep]
        shrink = np.bincount(row, minlength=len(offsets) - 1) * 2
        offsets = offsets - np.concatenate(([0], np.cumsum(shrink)))
    # nulls stay null: is_valid() is a fresh bitmap at offset 0, like the rebased offsets
    validity = arr.is_valid().buffers()[1] if arr.null_count else None
    decoded = pa.Array.from_buffers(
        pa.binary(), len(arr), [validity, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(out)], arr.null_count
    )
    try:
        return decoded.cast(pa.string())  # one UTF-8 check for the whole array
    except pa.ArrowInvalid:
        return _repair_utf8(decoded, arr, np.unique(row[value >= 0x80]))


def _percent_escapes(offsets: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, position of the '%', byte value) of every valid %XX escape in `data`.

    Valid escapes never overlap (a '%' is followed by two hex digits, never by a
    '%'), so each '%' is judged on its own, all at once.
    """
    pct = np.flatnonzero(data == 0x25)
    row = np.searchsorted(offsets, pct, side="right") - 1
    inside = pct + 2 < offsets[row + 1]  # both digits in the same row
    pct, row = pct[inside], row[inside]
    hi = _HEX_VALUE[data[pct + 1]]
    lo = _HEX_VALUE[data[pct + 2]]
    ok = (hi >= 0) & (lo >= 0)
    return row[ok], pct[ok], (hi[ok] * 16 + lo[ok]).astype(np.uint8)


def _repair_utf8(decoded: pa.BinaryArray, original: pa.StringArray, suspects: np.ndarray) -> pa.StringArray:
    """The rare path: some row's escapes decode to invalid UTF-8.

    Only a row with an escaped byte >= 0x80 can be invalid (the unescaped text is
    UTF-8 already); those alone are checked one by one. A row that is valid as a whole
    decodes exactly as `unquote`'s per-run decoding would; the others get the stdlib's
    answer.
    """
    bad, fixed = [], []
    raw_rows = decoded.take(suspects).to_pylist()
    for i, raw, text in zip(suspects.tolist(), raw_rows, original.take(suspects).to_pylist()):
        if raw is None:
            continue
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(i)
            fixed.append(unquote_plus(text).encode("utf-8"))
    mask = np.zeros(len(decoded), dtype=bool)
    mask[bad] = True
    return pc.replace_with_mask(decoded, pa.array(mask), pa.array(fixed, pa.binary())).cast(pa.string())


def quote_array(arr: pa.Array | pa.ChunkedArray, space_as_plus: bool = False) -> pa.StringArray:
    """`urllib.parse.quote(s, safe='/')` applied to every string of `arr` (nulls stay null);
    with `space_as_plus`, `quote_plus(s, safe='/')` (S3 Inventory CSV's encoding).

    Each UTF-8 byte outside A-Z a-z 0-9 '_.-~/' becomes %XX (upper-case hex), so a
    space is '%20' ('+' with `space_as_plus`) and '+' is '%2B'.
    """
    arr = _as_string_array(arr)
    valid = arr.is_valid()
    offsets, data = string_buffers(arr)
    space = (data == 0x20) if space_as_plus else np.zeros(len(data), dtype=bool)
    safe = _QUOTE_SAFE[data] | space
    width = np.where(safe, 1, 3)
    end = np.cumsum(width)
    start = end - width
    out = np.empty(int(end[-1]) if len(end) else 0, dtype=np.uint8)
    out[start[safe]] = np.where(space[safe], np.uint8(0x2B), data[safe])
    esc, byte = start[~safe], data[~safe]
    out[esc] = 0x25
    out[esc + 1] = _HEX_UPPER[byte >> 4]
    out[esc + 2] = _HEX_UPPER[byte & 0x0F]
    new_offsets = np.concatenate(([0], end))[offsets]
    quoted = _from_buffers(new_offsets, out)
    if arr.null_count:
        quoted = pc.if_else(valid, quoted, pa.scalar(None, pa.string()))
    return quoted


def looks_url_encoded(arr: pa.Array | pa.ChunkedArray) -> tuple[bool, bool]:
    """(some key has a character URL encoding never produces, some key has a %XX escape)."""
    arr = _as_string_array(arr)
    foreign = pc.any(pc.match_substring_regex(arr, NOT_URL_ENCODED_RE)).as_py() or False
    escaped = pc.any(pc.match_substring_regex(arr, PERCENT_ESCAPE_RE)).as_py() or False
    return foreign, escaped
