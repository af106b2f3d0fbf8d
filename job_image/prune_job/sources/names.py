"""The one check for names that come from outside: object keys listed under a prefix, file
names in manifest.json or an index, shard names. Such a name must be a relative path of plain
segments that stays inside the folder it belongs to; the project checks this itself rather than
trusting an S3 SDK, a server or a file to have refused it.

Refused: empty names, absolute names, empty segments (`a//b`), `.` and `..` segments,
backslashes and NUL or other control characters, and names that resolve (through a symbolic
link already in the folder) outside it. No torch and nothing heavy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional


class UnsafeName(ValueError):
    """A name from outside that would reach outside its folder; the message names it."""


def name_problem(name: object) -> Optional[str]:
    """Why `name` cannot name a file inside a folder, or None."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a string"
    if not name:
        return "is empty"
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return "contains a control character"
    if "\\" in name:
        return "contains a backslash"
    if name.startswith("/"):
        return "is absolute"
    segments = name.split("/")
    if "" in segments:
        return "has an empty segment"
    if any(s in (".", "..") for s in segments):
        return "has a '.' or '..' segment"
    return None


def check_name(name: object, what: str, error: type[Exception] = UnsafeName) -> str:
    """`name` itself when safe; else `error` naming `what` (e.g. "s3://b/p: object key") and the name."""
    problem = name_problem(name)
    if problem:
        raise error(f"{what} {name!r} {problem}; refused (a name from outside must stay inside its folder)")
    return name  # type: ignore[return-value]


def path_inside(folder: Path, name: object, what: str, error: type[Exception] = UnsafeName) -> Path:
    """`folder / name`, after checking the name and that it resolves inside `folder`."""
    check_name(name, what, error)
    path = Path(folder) / str(name)
    root = Path(folder).resolve()
    if not path.resolve().is_relative_to(root):
        raise error(f"{what} {name!r} resolves outside {folder}; refused")
    return path
