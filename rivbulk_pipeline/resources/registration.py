"""Registration providers: who an image belongs to, and where their properties are.

`S3TagRegistrationProvider` reads the seed's tags (UserId, Properties). A team with its own
source of truth names a class by import path with `CustomRegistrationProvider`; the class
implements `registration_for(obj, tags)` and `load_properties(ref)` (see README).
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Mapping, Optional

import dagster as dg
from pydantic import PrivateAttr

from ..core.errors import ObjectTooLarge, RegistrationRejected
from ..core.model import ObjectRef, Reason, RegistrationInfo
from ..core.rules.properties import DEFAULT_MAX_PROPERTIES_BYTES, parse_properties, parse_properties_uri
from ..core.rules.tags import tag_lookup
from .object_store import ObjectStoreResource


class RegistrationProviderResource(dg.ConfigurableResource):
    """The interface the assets depend on (core.ports.RegistrationProvider)."""

    def registration_for(self, obj: ObjectRef, tags: Mapping[str, str]) -> Optional[RegistrationInfo]:
        raise NotImplementedError

    def load_properties(self, properties_ref: str) -> dict[str, str]:
        raise NotImplementedError


class S3TagRegistrationProvider(RegistrationProviderResource):
    """UserId and Properties from the object's tags; properties.json from an allowed bucket."""

    store: ObjectStoreResource
    allowed_property_buckets: list[str]
    max_properties_bytes: int = DEFAULT_MAX_PROPERTIES_BYTES
    user_id_tag: str = "UserId"
    properties_tag: str = "Properties"

    def registration_for(self, obj: ObjectRef, tags: Mapping[str, str]) -> Optional[RegistrationInfo]:
        user_id = tag_lookup(tags, self.user_id_tag)
        if user_id is None:
            return None
        properties_ref = tag_lookup(tags, self.properties_tag) or None
        if properties_ref:
            # Refuse a path outside the allowed buckets before anything is fetched.
            parse_properties_uri(properties_ref, self.allowed_property_buckets, str(obj))
        return RegistrationInfo(user_id=user_id, properties_ref=properties_ref)

    def load_properties(self, properties_ref: str) -> dict[str, str]:
        bucket, key = parse_properties_uri(properties_ref, self.allowed_property_buckets, properties_ref)
        try:
            raw = self.store.get_bytes(bucket, key, max_bytes=self.max_properties_bytes)
        except ObjectTooLarge as exc:  # refused from its size: a 500 MB file costs no memory
            raise RegistrationRejected(
                Reason.BAD_PROPERTIES, f"{properties_ref}: properties file {_size_text(exc)}, over the {exc.bound}-byte bound"
            ) from None
        return parse_properties(raw, properties_ref, self.max_properties_bytes)


def _size_text(exc: ObjectTooLarge) -> str:
    return f"is {exc.size} bytes" if exc.size is not None else "is larger"


class CustomRegistrationProvider(RegistrationProviderResource):
    """A provider class of the user's own, named `package.module:ClassName`.

    The class is built with `options` as keyword arguments, plus `store=` when its
    constructor accepts it. It must define `registration_for` and `load_properties`.
    """

    class_path: str
    options: dict[str, Any] = {}
    store: ObjectStoreResource
    _instance: Any = PrivateAttr(default=None)

    def _provider(self) -> Any:
        if self._instance is None:
            module_name, _, class_name = self.class_path.partition(":")
            if not module_name or not class_name:
                raise ValueError(f"provider class path {self.class_path!r} must look like 'package.module:ClassName'")
            cls = getattr(importlib.import_module(module_name), class_name)
            for method in ("registration_for", "load_properties"):
                if not callable(getattr(cls, method, None)):
                    raise TypeError(f"provider class {self.class_path} has no {method}() method")
            kwargs: dict[str, Any] = dict(self.options)
            if "store" in inspect.signature(cls).parameters:
                kwargs["store"] = self.store
            self._instance = cls(**kwargs)
        return self._instance

    def registration_for(self, obj: ObjectRef, tags: Mapping[str, str]) -> Optional[RegistrationInfo]:
        return self._provider().registration_for(obj, tags)

    def load_properties(self, properties_ref: str) -> dict[str, str]:
        return self._provider().load_properties(properties_ref)
