"""BASELINE: what the reference bulk loader did (FACTS.md, "as its code really behaves").

Written from that description to be measured against, defects included, and no slower
than it has to be: the point is a fair comparison, not a straw man.
"""

from __future__ import annotations

import gzip
import io
from typing import Iterable, Iterator, Mapping
from urllib.parse import unquote_plus

from rivbulk_pipeline.core.model import ObjectRef
from rivbulk_pipeline.core.ports import Gateway, ObjectStore


def baseline_inventory_rows(store: ObjectStore, bucket: str, data_keys: Iterable[str]) -> Iterator[tuple[str, ...]]:
    """Every row of the CSV data files, split on commas (fileSchema ignored, no checksum check).

    Fields are unquoted by stripping '"'. The key is decoded with `unquote_plus` only when
    it holds a '%': the reference's bug, which leaves '+' (an encoded space) in keys that
    have no other escape.
    """
    for data_key in data_keys:
        with store.open_read(bucket, data_key) as raw, gzip.GzipFile(fileobj=raw) as unzipped:
            for line in io.TextIOWrapper(unzipped, encoding="utf-8"):
                fields = line.rstrip("\n").split(",")
                if len(fields) < 2:
                    continue  # the blank lines at the end of a report
                key = fields[1].strip('"')
                if "%" in key:
                    key = unquote_plus(key)
                yield (fields[0].strip('"'), key, *(f.strip('"') for f in fields[2:6]))


def _lowered(tags: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in tags.items()}


def baseline_qualify(refs: Iterable[ObjectRef], store: ObjectStore) -> list[tuple[ObjectRef, bool]]:
    """Sequential qualification with the reference's three tag reads per object: two in the
    batch handler (the markers, then the registration provider) and a third in the indexer."""
    decisions = []
    for ref in refs:
        markers = _lowered(store.get_tags(ref.bucket, ref.key, ref.version_id))  # 1: batch handler
        if markers.get("indexed", "").lower() == "true" or markers.get("ignore", "").lower() == "true":
            decisions.append((ref, False))
            continue
        user_id = _lowered(store.get_tags(ref.bucket, ref.key, ref.version_id)).get("userid")  # 2: provider
        if not user_id:
            decisions.append((ref, False))
            continue
        store.get_tags(ref.bucket, ref.key, ref.version_id)  # 3: the indexer reads them again
        decisions.append((ref, True))
    return decisions


def baseline_index(rows: Iterable[tuple[ObjectRef, str]], store: ObjectStore, gateway: Gateway) -> int:
    """Sequential, unthrottled registration: read the image, call the gateway, never check the
    answer, tag `Indexed=True` anyway. Returns the number of gateway calls made."""
    calls = 0
    for ref, user_id in rows:
        image = store.get_bytes(ref.bucket, ref.key, ref.version_id)
        gateway.register(user_id, image, {})
        calls += 1
        store.merge_tags(ref.bucket, ref.key, {"Indexed": "True"}, ref.version_id)
    return calls
