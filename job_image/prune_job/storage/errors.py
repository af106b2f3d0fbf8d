"""What can go wrong with S3, in words: the StorageError family, and the classification
of what the SDK or the network raised into one of them (and whether a retry may help).
Credentials never appear in a message."""
from __future__ import annotations

DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                "AllAccessDisabled", "AccountProblem"}
TRANSIENT_CODES = {"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed",
                   "OperationAborted", "XMinioServerNotInitialized"}


class StorageError(Exception):
    """An S3 problem, in words; never carries credentials."""


class EndpointUnreachable(StorageError):
    pass


class AccessDenied(StorageError):
    pass


class BucketNotFound(StorageError):
    pass


class ObjectNotFound(StorageError):
    pass


class IntegrityError(StorageError):
    pass


class UploadError(StorageError):
    """An upload that failed; the local files are kept (the message says where)."""


def classify(e: Exception, what: str, url: str, bucket: str = "", key: str = "") -> tuple[StorageError, bool]:
    """The StorageError for what `what` (a verb: "uploading", "listing", ...) against endpoint `url`
    raised, and whether it is transient (worth a retry)."""
    from minio.error import InvalidResponseError, S3Error, ServerError

    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}" if bucket else url
    if isinstance(e, StorageError):
        return e, False
    if isinstance(e, S3Error):
        code = e.code or ""
        if code in DENIED_CODES:
            return AccessDenied(f"{what} {where}: access denied by {url} ({code}); check "
                                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's policy"), False
        if code == "NoSuchBucket":
            return BucketNotFound(f"{what} {where}: bucket {bucket!r} does not exist at {url}"), False
        if code in ("NoSuchKey", "NoSuchUpload", "NoSuchObject"):
            return ObjectNotFound(f"{what} {where}: no such object"), False
        return StorageError(f"{what} {where}: {code or 'error'} from {url}"), code in TRANSIENT_CODES
    if isinstance(e, ServerError):
        return StorageError(f"{what} {where}: HTTP {e.status_code} from {url}"), True
    if isinstance(e, InvalidResponseError):
        return StorageError(f"{what} {where}: unexpected response from {url}"), True
    if _is_network_error(e):
        return EndpointUnreachable(f"{what} {where}: cannot reach {url} ({_reason(e)}); "
                                   "check AWS_ENDPOINT_URL and the network"), True
    return StorageError(f"{what} {where}: {type(e).__name__}"), False


def _is_network_error(e: BaseException) -> bool:
    import urllib3

    return isinstance(e, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def _reason(e: BaseException) -> str:
    import urllib3

    if isinstance(e, urllib3.exceptions.MaxRetryError) and e.reason is not None:
        e = e.reason
    text = str(e).lower()
    if isinstance(e, urllib3.exceptions.NewConnectionError) or "refused" in text:
        return "connection refused"
    if isinstance(e, urllib3.exceptions.NameResolutionError) or "resolution" in text:
        return "host name not found"
    if isinstance(e, (urllib3.exceptions.TimeoutError, TimeoutError)) or "timed out" in text:
        return "timed out"
    if isinstance(e, urllib3.exceptions.SSLError) or "ssl" in text or "certificate" in text:
        return "TLS handshake failed"
    return "connection lost"
