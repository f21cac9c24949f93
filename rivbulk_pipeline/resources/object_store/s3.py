"""S3 through boto3: paginated listings, retries by botocore, errors mapped by code."""

from __future__ import annotations

import contextlib
import io
import os
import threading
from datetime import timezone
from typing import Any, BinaryIO, ContextManager, Iterator, Mapping, Optional
from urllib.parse import quote

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    FlexibleChecksumError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from pydantic import Field, PrivateAttr

from ...core.errors import (
    AccessDenied,
    ObjectChanged,
    ObjectNotFound,
    ObjectTooLarge,
    StoreError,
    TagLimitError,
    TransientStoreError,
)
from ...core.model import ObjectInfo, ObjectRef
from ...core.rules.tags import validate_tag_set
from ..aws import AwsClients, error_code
from .base import CHUNK_BYTES, ObjectStoreResource

_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "NotFound", "404"}
_DENIED_CODES = {
    "AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "AccountProblem",
}  # fmt: skip
_TRANSIENT_CODES = {
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed",
    "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
    "BandwidthLimitExceeded", "RequestThrottled", "PriorRequestNotComplete", "OperationAborted",
    "500", "502", "503", "504",
}  # fmt: skip
# Connection failures, timeouts and cut or corrupted response bodies: a later try may work.
_TRANSIENT_EXCEPTIONS = (BotoConnectionError, HTTPClientError, IncompleteReadError, FlexibleChecksumError)


def _map_error(exc: Exception, bucket: str, key: str) -> StoreError:
    """Translate a boto3/botocore failure into our errors, by S3 error code first."""
    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, (ClientError, BotoCoreError)):
        exc = exc.__context__  # the managed transfer wraps the real error
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        request_id = exc.response.get("ResponseMetadata", {}).get("RequestId", "")
        text = f"{exc.operation_name}: {code or 'error'} (HTTP {status}) {error.get('Message', '')}".rstrip()
        if request_id:
            text += f" [request id {request_id}]"
        if code in _NOT_FOUND_CODES:
            return ObjectNotFound(bucket, key, text)
        if code == "PreconditionFailed" or status == 412:
            return ObjectChanged(bucket, key, text)
        if code in _DENIED_CODES:
            return AccessDenied(bucket, key, text)
        if code in _TRANSIENT_CODES:
            return TransientStoreError(bucket, key, text + ", still failing after the client's retries")
        if code == "InvalidTag":
            return TagLimitError(bucket, key, text)
        if status == 404:
            return ObjectNotFound(bucket, key, text)
        if status == 403:
            return AccessDenied(bucket, key, text)
        if status == 429 or (isinstance(status, int) and status >= 500):
            return TransientStoreError(bucket, key, text + ", still failing after the client's retries")
        return StoreError(bucket, key, text)
    if isinstance(exc, _TRANSIENT_EXCEPTIONS):
        return TransientStoreError(bucket, key, f"{type(exc).__name__}, still failing after retries: {exc}")
    if isinstance(exc, NoCredentialsError):
        return StoreError(bucket, key, "no AWS credentials found in the standard credential chain")
    # Other botocore errors (e.g. parameter validation) may quote the request: name the type only.
    return StoreError(bucket, key, f"{type(exc).__name__} from botocore")


@contextlib.contextmanager
def _s3_errors(bucket: str, key: str) -> Iterator[None]:
    try:
        yield
    except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
        mapped = _map_error(exc, bucket, key)
        # Keep the cause for debugging, except where botocore's text may quote the request.
        raise mapped from (exc if isinstance(exc, (ClientError, *_TRANSIENT_EXCEPTIONS)) else None)


def _total_size(response: dict) -> Optional[int]:
    """The object's whole size from a GET's `Content-Range: bytes 0-99/12345` (else its length)."""
    content_range = response.get("ContentRange") or ""
    total = content_range.rpartition("/")[2]
    if total.isdigit():
        return int(total)
    length = response.get("ContentLength")
    return int(length) if length is not None and not content_range else None


def _strip_etag(etag: str) -> str:
    return etag.strip('"')


def _version(version_id: Optional[str]) -> Optional[str]:
    return None if version_id in (None, "", "null") else version_id


class _S3BodyReader(io.RawIOBase):
    """An object's body as a raw stream that resumes where it stopped when the connection
    breaks (ranged GET, If-Match on the ETag so a changed object fails instead of mixing)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        version_id: Optional[str],
        response: dict,
        max_attempts: int,
        last_byte: Optional[int] = None,
    ) -> None:
        super().__init__()
        self._client, self._bucket, self._key, self._version_id = client, bucket, key, version_id
        self._last_byte = last_byte  # a ranged read (from byte 0) resumes within its range
        self._body = response["Body"]
        self._etag = response.get("ETag", "")
        self._size = int(response.get("ContentLength", 0))
        self._pos = 0
        self._max_attempts = max(1, max_attempts)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        failures = 0
        while True:
            try:
                n = self._body.readinto(buffer)
                if n == 0 and len(buffer) and self._pos < self._size:
                    raise IncompleteReadError(actual_bytes=self._pos, expected_bytes=self._size)
                self._pos += n
                return n
            except _TRANSIENT_EXCEPTIONS as exc:
                failures += 1
                # A checksum mismatch is found at the end, after the bytes were handed out:
                # resuming cannot repair it, only a fresh read can.
                cannot_resume = isinstance(exc, FlexibleChecksumError) or (self._size and self._pos >= self._size)
                if cannot_resume or failures >= self._max_attempts:
                    raise _map_error(exc, self._bucket, self._key) from exc
                self._reopen()

    def _reopen(self) -> None:
        with contextlib.suppress(Exception):
            self._body.close()
        end = "" if self._last_byte is None else self._last_byte
        params = {"Bucket": self._bucket, "Key": self._key, "Range": f"bytes={self._pos}-{end}", "IfMatch": self._etag}
        if self._version_id:
            params["VersionId"] = self._version_id
        with _s3_errors(self._bucket, self._key):
            self._body = self._client.get_object(**params)["Body"]

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._body.close()
        super().close()


class S3ObjectStore(ObjectStoreResource):
    """Amazon S3 (or an S3-compatible endpoint) through the client dagster-aws's configuration
    builds (`AwsClients`). Credentials: the standard chain (environment, profile, task role)."""

    aws: AwsClients = Field(
        description="dagster-aws's S3Resource with rivbulk's pool and retries: region, endpoint, profile, ..."
    )

    _client: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    @property
    def max_attempts(self) -> int:
        return self.aws.max_attempts

    def _s3(self) -> Any:
        """The boto3 client, made on first use (clients are thread-safe, sessions are not)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self.aws.get_client()
        return self._client

    @staticmethod
    def _params(bucket: str, key: str, version_id: Optional[str] = None, **extra: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"Bucket": bucket, "Key": key, **extra}
        if version_id is not None:
            params["VersionId"] = version_id
        return params

    def _open(
        self, bucket: str, key: str, version_id: Optional[str], if_match: Optional[str] = None
    ) -> io.BufferedReader:
        condition = {"IfMatch": f'"{if_match}"'} if if_match is not None else {}
        with _s3_errors(bucket, key):
            response = self._s3().get_object(**self._params(bucket, key, version_id, **condition))
        raw = _S3BodyReader(self._s3(), bucket, key, version_id, response, self.max_attempts)
        return io.BufferedReader(raw, buffer_size=CHUNK_BYTES)

    def _get_bounded(
        self, bucket: str, key: str, version_id: Optional[str], if_match: Optional[str], max_bytes: int
    ) -> bytes:
        """At most max_bytes + 1 bytes asked for (a ranged GET from byte 0); a larger object is
        refused from the total size S3 states in Content-Range, before its body is read."""
        condition = {"IfMatch": f'"{if_match}"'} if if_match is not None else {}
        params = self._params(bucket, key, version_id, Range=f"bytes=0-{max_bytes}", **condition)
        with _s3_errors(bucket, key):
            try:
                response = self._s3().get_object(**params)
            except ClientError as exc:
                if error_code(exc) != "InvalidRange":
                    raise
                # S3 answers 416 to any range on an empty object: read it unranged, still bounded.
                del params["Range"]
                response = self._s3().get_object(**params)
        raw = _S3BodyReader(self._s3(), bucket, key, version_id, response, self.max_attempts, last_byte=max_bytes)
        with io.BufferedReader(raw, buffer_size=min(CHUNK_BYTES, max_bytes + 1)) as reader:
            total = _total_size(response)
            if total is not None and total > max_bytes:
                raise ObjectTooLarge(bucket, key, total, max_bytes)  # closing drops the unread body
            body = reader.read(max_bytes + 1)
        if len(body) > max_bytes:
            raise ObjectTooLarge(bucket, key, None, max_bytes)
        return body

    def console_url(self, bucket: str, key: str) -> Optional[str]:
        if self.aws.endpoint_url:  # MinIO, LocalStack, moto: no AWS console
            return None
        region = self.aws.region_name or self._s3().meta.region_name
        return f"https://console.aws.amazon.com/s3/object/{bucket}?region={region}&prefix={quote(key, safe='/')}"

    def create_bucket(self, bucket: str) -> None:
        client = self._s3()
        params: dict[str, Any] = {"Bucket": bucket}
        region = client.meta.region_name
        if region and region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        with _s3_errors(bucket, ""):
            try:
                client.create_bucket(**params)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass

    def get_bytes(
        self,
        bucket: str,
        key: str,
        version_id: Optional[str] = None,
        if_match: Optional[str] = None,
        max_bytes: Optional[int] = None,
    ) -> bytes:
        if max_bytes is not None:
            return self._get_bounded(bucket, key, version_id, if_match, max_bytes)
        with self._open(bucket, key, version_id, if_match) as f:
            return f.read()

    def open_read(self, bucket: str, key: str, version_id: Optional[str] = None) -> ContextManager[BinaryIO]:
        return self._open(bucket, key, version_id)

    def head(self, bucket: str, key: str, version_id: Optional[str] = None) -> ObjectInfo:
        with _s3_errors(bucket, key):
            r = self._s3().head_object(**self._params(bucket, key, version_id))
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=int(r["ContentLength"]),
            etag=_strip_etag(r["ETag"]),
            last_modified=r["LastModified"].astimezone(timezone.utc),
            version_id=_version(r.get("VersionId")),
            storage_class=r.get("StorageClass") or "STANDARD",
        )

    def put_bytes(self, bucket: str, key: str, body: bytes, content_type: Optional[str] = None) -> str:
        extra = {"ContentType": content_type} if content_type else {}
        with _s3_errors(bucket, key):
            r = self._s3().put_object(**self._params(bucket, key, Body=body, **extra))
        return _strip_etag(r["ETag"])

    def upload_file(self, bucket: str, key: str, path: str) -> str:
        """Managed transfer (multipart above 8 MiB). The ETag is read back with a HEAD, since
        the transfer does not return it; a multipart ETag is `<md5 of part md5s>-<parts>`."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file to upload to s3://{bucket}/{key}")
        transfer = TransferConfig(max_concurrency=max(1, min(10, self.aws.max_pool_connections)))
        with _s3_errors(bucket, key):
            self._s3().upload_file(path, bucket, key, Config=transfer)
        return self.head(bucket, key).etag

    def list_objects(self, bucket: str, prefix: str = "", start_after: str = "") -> Iterator[ObjectInfo]:
        paginator = self._s3().get_paginator("list_objects_v2")
        with _s3_errors(bucket, prefix):
            extra = {"StartAfter": start_after} if start_after else {}
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix, **extra):
                for obj in page.get("Contents", ()):
                    yield ObjectInfo(
                        bucket=bucket,
                        key=obj["Key"],
                        size=int(obj["Size"]),
                        etag=_strip_etag(obj.get("ETag", "")),
                        last_modified=obj["LastModified"].astimezone(timezone.utc),
                        storage_class=obj.get("StorageClass") or "STANDARD",
                    )

    def list_prefixes(self, bucket: str, prefix: str = "") -> Iterator[str]:
        paginator = self._s3().get_paginator("list_objects_v2")
        with _s3_errors(bucket, prefix):
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
                for common in page.get("CommonPrefixes", ()):
                    yield common["Prefix"]

    def get_tags(self, bucket: str, key: str, version_id: Optional[str] = None) -> dict[str, str]:
        with _s3_errors(bucket, key):
            r = self._s3().get_object_tagging(**self._params(bucket, key, version_id))
        return {tag["Key"]: tag["Value"] for tag in r.get("TagSet", ())}

    def put_tags(self, bucket: str, key: str, tags: Mapping[str, str], version_id: Optional[str] = None) -> None:
        validate_tag_set(tags, str(ObjectRef(bucket, key, version_id)))
        tagging = {"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]}
        with _s3_errors(bucket, key):
            if tags:
                self._s3().put_object_tagging(**self._params(bucket, key, version_id, Tagging=tagging))
            else:  # the same empty set; some S3 look-alikes (moto) reject an empty TagSet
                self._s3().delete_object_tagging(**self._params(bucket, key, version_id))

    def delete(self, bucket: str, key: str) -> None:
        with _s3_errors(bucket, key):
            self._s3().delete_object(Bucket=bucket, Key=key)
