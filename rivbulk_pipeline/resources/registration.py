"""Registration providers: who an image belongs to, and where their properties are.

`S3TagRegistrationProvider` reads the seed's tags (UserId, Properties). A team with its own
source of truth names a class by import path with `CustomRegistrationProvider`; the class
implements `registration_for(obj, tags)` and `load_properties(ref)` (see docs/providers.md).
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any, Mapping, Optional

import dagster as dg
from dagster_aws.secretsmanager import SecretsManagerResource
from pydantic import Field, PrivateAttr

from ..core.errors import DeploymentError, ObjectTooLarge, RegistrationRejected
from ..core.model import ObjectRef, Reason, RegistrationInfo
from ..core.rules.properties import DEFAULT_MAX_PROPERTIES_BYTES, parse_properties, parse_properties_uri
from ..core.rules.tags import tag_lookup
from ..settings import is_reference
from .aws import read_secret_string
from .object_store import ObjectStoreResource

OPTIONS_VARIABLE = "RIVBULK_PROVIDER_OPTIONS"


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
                Reason.BAD_PROPERTIES,
                f"{properties_ref}: properties file {_size_text(exc)}, over the {exc.bound}-byte bound",
            ) from None
        return parse_properties(raw, properties_ref, self.max_properties_bytes)


def _size_text(exc: ObjectTooLarge) -> str:
    return f"is {exc.size} bytes" if exc.size is not None else "is larger"


class CustomRegistrationProvider(RegistrationProviderResource):
    """A provider class of the user's own, named `package.module:ClassName`.

    The class is built with `options` as keyword arguments, plus `store=` when its
    constructor accepts it. It must define `registration_for` and `load_properties`. An option
    given by reference, `{"env": "VARIABLE"}` or `{"secret": "<Secrets Manager id>"}`, is passed
    as the variable's or the secret's value, read when the provider is first used: Dagster
    stores the options (in every run's job snapshot), so only the reference is ever stored.
    """

    class_path: str
    options: dict[str, Any] = {}
    store: ObjectStoreResource
    secrets_manager: Optional[SecretsManagerResource] = Field(
        default=None, description='dagster-aws\'s Secrets Manager resource `{"secret": ...}` options are read through'
    )
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
            kwargs: dict[str, Any] = {name: self._resolved(name, item) for name, item in self.options.items()}
            if "store" in inspect.signature(cls).parameters:
                kwargs["store"] = self.store
            self._instance = cls(**kwargs)
        return self._instance

    def _resolved(self, option: str, item: Any) -> Any:
        """An option's value: a reference read now, anything else as given. Errors name the
        option and the variable or secret, never a value."""
        if not is_reference(item):
            return item
        kind, name = next(iter(item.items()))
        if kind == "env":
            value = os.environ.get(name)
            if value is None:
                raise DeploymentError(
                    f"{OPTIONS_VARIABLE}: option {option!r} names the environment variable {name}, which is not set"
                )
            return value
        value = read_secret_string(
            self.secrets_manager, name, f"{OPTIONS_VARIABLE}: option {option!r}: cannot read the secret {name!r}"
        )
        if value is None:
            raise DeploymentError(f"{OPTIONS_VARIABLE}: option {option!r}: the secret {name!r} has no SecretString")
        return value

    def registration_for(self, obj: ObjectRef, tags: Mapping[str, str]) -> Optional[RegistrationInfo]:
        return self._provider().registration_for(obj, tags)

    def load_properties(self, properties_ref: str) -> dict[str, str]:
        return self._provider().load_properties(properties_ref)
