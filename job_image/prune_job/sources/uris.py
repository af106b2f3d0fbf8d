"""The one URI parser: every "is this s3://?" question in the project is asked here.

    builtin:NAME          a model or text that ships with the worker
    s3://bucket/key       an object or a prefix in an S3 bucket
    hf://org/name         a Hugging Face Hub repository
    pvc://claim/path      a path inside a PersistentVolumeClaim, mounted under $PRUNE_JOB_PVC_ROOT
    file:///path, /path   a local path

No torch and nothing heavy: the spec models and `prune-job validate` use it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

SCHEMES = ("builtin", "s3", "hf", "pvc", "file")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
DEFAULT_PVC_ROOT = "/mnt/pvc"
# What no URI may be, as (RE2-compatible regex, reason): parse_uri refuses these and the CRDs
# carry them as CEL rules (crdgen.add_uri_rules). No backslashes, so they read the same in CEL.
# The reasons never quote the URI: the first one's match is a secret.
URI_RULES = (
    (r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]*@",
     "embeds credentials (user:secret@); give them through a Secret (spec.output.credentialsSecret) instead"),
    (r"^(s3|pvc|hf)://(/|$)", "names no bucket, repository or claim"),
    (r"^(s3|pvc|hf)://(.*/)?[.][.]?(/|$)", "has a '.' or '..' segment"),
    (r"^(s3|pvc|hf)://.*//", "has an empty segment ('//')"),
)
_URI_RULES = tuple((re.compile(rx), reason) for rx, reason in URI_RULES)
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


class UriError(ValueError):
    """A URI that names nothing usable; the message says why."""


@dataclass(frozen=True)
class Uri:
    """`scheme` is one of SCHEMES or "path"; `authority` the builtin name, bucket,
    Hub repository or claim; `path` the key, prefix or path beneath it."""

    scheme: str
    authority: str
    path: str
    raw: str

    @property
    def is_remote(self) -> bool:
        """Read and written through the storage package (not a local path)."""
        return self.scheme == "s3"

    @property
    def is_local(self) -> bool:
        """A path on this machine (plain, file:// or a mounted claim)."""
        return self.scheme in ("path", "file", "pvc")

    def local_path(self) -> Path:
        """`file://x` and plain paths as given; `pvc://claim/path` under $PRUNE_JOB_PVC_ROOT (default /mnt/pvc)."""
        if self.scheme == "pvc":
            return Path(os.environ.get("PRUNE_JOB_PVC_ROOT", DEFAULT_PVC_ROOT)) / self.authority / self.path
        if self.scheme in ("path", "file"):
            return Path(self.path)
        raise UriError(f"{self.raw!r} is not a local path")

    def join(self, name: str) -> str:
        """The URI of `name` inside this folder or prefix."""
        return self.raw.rstrip("/") + "/" + name


def parse_uri(uri: str) -> Uri:
    """Split a URI into scheme, authority and path; raise UriError for an unknown scheme or a missing
    bucket, repository or claim."""
    if not uri:
        raise UriError("must not be empty")
    for rule, reason in _URI_RULES:
        if rule.search(uri):
            raise UriError(f"the URI {reason}")
    if uri.startswith("builtin:"):
        return Uri("builtin", uri.removeprefix("builtin:"), "", uri)
    match = _SCHEME.match(uri)
    if match is None:
        return Uri("path", "", uri, uri)
    scheme, rest = match.group(1), uri[match.end():]
    if scheme not in SCHEMES:
        raise UriError(f"unsupported scheme {scheme!r}")
    if scheme == "file":
        return Uri("file", "", rest, uri)
    if scheme == "hf":
        if not rest.strip("/"):
            raise _nameless(uri)
        return Uri("hf", rest.strip("/"), "", uri)
    authority, _, path = rest.partition("/")
    if not authority:
        raise _nameless(uri)
    return Uri(scheme, authority, path.strip("/"), uri)


def _nameless(uri: str) -> UriError:
    return UriError(f"{uri!r} names no bucket, repository or claim")


def local_path(uri: str) -> Path:
    return parse_uri(uri).local_path()


def is_remote(uri: str) -> bool:
    return parse_uri(uri).is_remote


def redact(text: str) -> str:
    """`text` with the user:secret@ part of any URI, and the values of the credential variables of
    this process's environment, replaced by `***`: for every message that leaves the process."""
    text = _USERINFO.sub(r"\1***@", str(text))
    for name in SECRET_ENV:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text
