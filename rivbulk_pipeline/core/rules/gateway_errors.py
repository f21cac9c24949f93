"""The error names a RIV register call can end with, and what each means for the object.

RIV answers HTTP 200 for every finished workflow; a FAILED answer carries Step Functions' `error`,
which is a Lambda exception's class name, a Rekognition error code or a Fail state's name (see
FACTS.md, "The RIV gateway as its code really behaves"). The name alone decides:

- about the image or the user: permanent, never retried until an operator reopens it;
- passing (quotas shared with the live service, service errors, timeouts): transient, retried;
- about the deployment (a missing collection or table, a request shape this RIV version does not
  take): the run stops, naming the error, because every other call would fail the same way.

A name in none of these lists is treated as transient: an unknown failure is never final.
"""

from __future__ import annotations

import enum


class ErrorKind(str, enum.Enum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    DEPLOYMENT = "deployment"


# The image or the user: the next call would fail the same way.
PERMANENT_ERRORS = frozenset(
    {
        "NoFacesDetectedException",
        "TooManyFacesDetectedException",
        "InvalidPoseDetectedException",
        "SunglassesDetectedException",
        "UserAlreadyExists",
        "InvalidImageFormatException",
        "ImageTooLargeException",
        "InvalidParameterException",
        "States.DataLimitExceeded",
    }
)

# Passing: quotas, throttling, service faults, the workflow's own timeout.
TRANSIENT_ERRORS = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "LimitExceededException",
        "InternalServerError",
        "TransientError",
        "Lambda.TooManyRequestsException",
        "Lambda.ServiceException",
        "Lambda.AWSLambdaException",
        "Lambda.SdkClientException",
        "States.Timeout",
        "States.TaskFailed",
        "TIMED_OUT",
    }
)

# The deployment: a missing resource, a permission, a request shape this RIV version cannot take.
DEPLOYMENT_ERRORS = frozenset(
    {
        "ResourceNotFoundException",
        "AccessDeniedException",
        "KeyError",
        "NonRecoverableError",
        "NotImplementedError",
        "InvalidS3ObjectException",
    }
)

# What each deployment error most likely means, for the message that stops the run.
DEPLOYMENT_CAUSES = {
    "ResourceNotFoundException": "RIV's Rekognition collection or DynamoDB table is missing (a partial deployment)",
    "AccessDeniedException": "a RIV Lambda lacks a permission (Rekognition, DynamoDB or S3)",
    "KeyError": "this RIV version does not take rivbulk's request shape: check RIVBULK_GATEWAY_REQUEST_SHAPE",
    "NonRecoverableError": "RIV's storage failed in a way it does not retry",
    "NotImplementedError": "RIV met a storage error it does not handle",
    "InvalidS3ObjectException": "RIV cannot read the image from S3 (by-reference mode): check its Lambdas' s3:GetObject"
    " permission; RIV lower-cases the bucket and key, so keys with capitals cannot be read this way",
}

# Every error name the UI may show as a reason code (a bounded set; anything else is `gateway_error`).
KNOWN_ERRORS = PERMANENT_ERRORS | TRANSIENT_ERRORS | DEPLOYMENT_ERRORS | {"ClientError"}

UNKNOWN_ERROR_CODE = "gateway_error"


def error_kind(name: str) -> ErrorKind:
    """What a FAILED answer's `error` means; unknown names are transient, never permanent."""
    if name in PERMANENT_ERRORS:
        return ErrorKind.PERMANENT
    if name in DEPLOYMENT_ERRORS:
        return ErrorKind.DEPLOYMENT
    return ErrorKind.TRANSIENT


def shown_code(name: str) -> str:
    """The error name as the UI shows it: itself when known, else `gateway_error`."""
    return name if name in KNOWN_ERRORS else UNKNOWN_ERROR_CODE
