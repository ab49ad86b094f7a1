"""The error family every part of imgpipe speaks.

`PermanentError` means "this input will never work": the record is written as
`rejected` with the message, and the message is not retried. `TransientError`
means "try again later": the SQS message becomes a batch item failure and is
redelivered. AWS error codes are translated into these in one place
(`pipeline.aws.translate_client_error`).
"""

from __future__ import annotations

__all__ = [
    "ImgpipeError",
    "PermanentError",
    "UnsupportedFormatError",
    "TooLargeError",
    "TransientError",
    "AccessDeniedError",
    "StateMachineRetry",
    "GoneError",
    "SupersededError",
    "ModelError",
    "ConfigError",
    "EventShapeError",
    "too_large_message",
]


class ImgpipeError(Exception):
    """Base class of every error imgpipe raises on purpose."""


class PermanentError(ImgpipeError):
    """The input is bad and always will be: record it as `rejected`, do not retry.

    The message is shown to people as-is, so it must be a sentence that says
    what is wrong (for example "not an image: the data is plain text").
    """


class UnsupportedFormatError(PermanentError):
    """A permanent error: the data is a known format that imgpipe does not accept (PDF, SVG,
    HEIC...). The HTTP API answers 415 for it."""


class TooLargeError(PermanentError):
    """A permanent error: the file is over the byte limit, or the image over the pixel
    limit. The HTTP API answers 413 for it."""


class TransientError(ImgpipeError):
    """A fault that may clear by itself (throttling, 5xx, timeouts): retry."""


class AccessDeniedError(TransientError):
    """AWS refused a request (403: the role's policy, a bucket policy, a KMS key's policy).

    Not the data's fault and not "gone": with s3:ListBucket granted, S3 answers a missing
    key with 404, so a 403 is a real denial. It is handled as a transient fault (retried,
    then the DLQ and its alarm: a fixed policy lets the redelivery through) and never
    becomes a record. The message names what was denied, and on what.
    """


class StateMachineRetry(ImgpipeError):
    """Raised by a handler so that the state machine runs its task again later.

    Step Functions matches a Retry by the exception's class name (the `errorType` Lambda
    reports), so every subclass must be named in the Retry of the tasks that call the
    function: the template gate (tests/template_gates.py, `retry_violations`) fails when
    one is not.
    """


class GoneError(ImgpipeError):
    """The object was deleted before it could be read: record it as `gone`."""


class SupersededError(ImgpipeError):
    """The object changed since the event was sent: a newer event will handle it."""


class ModelError(ImgpipeError):
    """The model is missing, corrupt or inconsistent: fail fast at start-up."""


class EventShapeError(ImgpipeError):
    """A function was invoked with an event that is not the kind it takes (an
    `aws lambda invoke` by hand, a wrong trigger); the message says what it expects."""


class ConfigError(ImgpipeError):
    """Settings are invalid; the message says which one and how to fix it."""


def too_large_message(size: int, limit: int) -> str:
    """The sentence for a file over the byte limit; `size` is the whole file's size."""
    return (
        f"file too large: {size:,} bytes exceeds the {limit:,}-byte limit "
        f"(IMGPIPE_MAX_OBJECT_BYTES)"
    )
