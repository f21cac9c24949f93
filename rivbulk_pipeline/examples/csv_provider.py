"""A registration provider that takes user ids from a CSV roster instead of object tags.

The roster is an object in the store with the header `key,user_id,properties_key`; each row
maps an image key to its user and (optionally) a properties.json key in the same bucket.
Enable it with RIVBULK_PROVIDER=rivbulk_pipeline.examples.csv_provider:CsvRosterProvider and
RIVBULK_PROVIDER_OPTIONS='{"bucket": "my-images", "roster_key": "roster.csv"}'.
"""

from __future__ import annotations

import csv
import io
import threading
from typing import Mapping, Optional

from rivbulk_pipeline.core.model import ObjectRef, RegistrationInfo
from rivbulk_pipeline.core.ports import ObjectStore
from rivbulk_pipeline.core.rules.properties import DEFAULT_MAX_PROPERTIES_BYTES, parse_properties


class CsvRosterProvider:
    def __init__(self, store: ObjectStore, bucket: str, roster_key: str) -> None:
        self.store = store
        self.bucket = bucket
        self.roster_key = roster_key
        self._roster: Optional[dict[str, tuple[str, str]]] = None
        self._lock = threading.Lock()

    def _rows(self) -> dict[str, tuple[str, str]]:
        with self._lock:  # read once per run, from whichever worker thread asks first
            if self._roster is None:
                text = self.store.get_bytes(self.bucket, self.roster_key).decode("utf-8")
                self._roster = {
                    row["key"]: (row["user_id"], row.get("properties_key") or "")
                    for row in csv.DictReader(io.StringIO(text))
                }
            return self._roster

    def registration_for(self, obj: ObjectRef, tags: Mapping[str, str]) -> Optional[RegistrationInfo]:
        entry = self._rows().get(obj.key) if obj.bucket == self.bucket else None
        if entry is None:
            return None
        user_id, properties_key = entry
        return RegistrationInfo(user_id=user_id, properties_ref=properties_key or None)

    def load_properties(self, properties_ref: str) -> dict[str, str]:
        # max_bytes: a larger file is refused from its size (ObjectTooLarge: bad_properties), never read whole.
        raw = self.store.get_bytes(self.bucket, properties_ref, max_bytes=DEFAULT_MAX_PROPERTIES_BYTES)
        return parse_properties(raw, f"s3://{self.bucket}/{properties_ref}")
