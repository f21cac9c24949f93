"""Errors the core and the adapters raise. Each names the object or file and the rule."""

from __future__ import annotations


class RivbulkError(Exception):
    """Base of every error this project raises on purpose."""


class InventoryError(RivbulkError):
    """An inventory report or one of its files breaks a rule (checksum, format, schema...)."""

    def __init__(self, location: str, rule: str) -> None:
        super().__init__(f"{location}: {rule}")
        self.location = location
        self.rule = rule


class StoreError(RivbulkError):
    """An object store call failed. `transient` says whether a retry may succeed."""

    transient = False

    def __init__(self, bucket: str, key: str, message: str) -> None:
        super().__init__(f"s3://{bucket}/{key}: {message}")
        self.bucket = bucket
        self.key = key


class ObjectNotFound(StoreError):
    """The object (or bucket) does not exist (S3 NoSuchKey / NoSuchBucket)."""


class ObjectChanged(StoreError):
    """A conditional read found another ETag than the one asked for (S3 412 PreconditionFailed)."""


class ObjectTooLarge(StoreError):
    """A bounded read found the object larger than the bound: nothing past the bound was read."""

    def __init__(self, bucket: str, key: str, size: int | None, bound: int) -> None:
        over = f"{size:,} bytes" if size is not None else "more than that"
        super().__init__(bucket, key, f"the object is {over}, over the {bound:,}-byte bound; it was not read")
        self.size = size
        self.bound = bound


class AccessDenied(StoreError):
    """The store refused access to the object (S3 AccessDenied)."""


class InvalidKey(StoreError):
    """The key cannot be stored by this store (e.g. a `..` segment on the local store)."""


class TagLimitError(StoreError):
    """A tag set breaks S3's tag rules: 10 tags, key <= 128 chars, value <= 256 chars."""


class TransientStoreError(StoreError):
    """Throttling, 5xx or a connection error that outlived the client's retries."""

    transient = True


class HistoryError(RivbulkError):
    """The import history refused a write (e.g. an item over DynamoDB's 400 KB)."""


class DeploymentError(RivbulkError):
    """A fault of the deployment, not of any one image or user: a wrong gateway URL or stage,
    a bad key, a missing permission. It stops the run at once and leaves the objects free."""


class RegistrationRejected(RivbulkError):
    """A registration provider's verdict that one object breaks a rule.

    `reason` is a short token (a `Reason` value, or a provider's own such as `not_in_roster`);
    `detail` names the object and the rule, never property contents.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class ImageRejected(RivbulkError):
    """An image breaks one of the registry's rules (format, size, dimensions, decodability).

    `reason_code` is a short stable string (`unsupported_format`, `too_large`, `too_small`,
    `corrupt_image`); `detail` names the image's location and the rule, never its content.
    """

    def __init__(self, reason_code: str, detail: str) -> None:
        super().__init__(detail)
        self.reason_code = reason_code
        self.detail = detail
