"""Where a form goes back to: the one check for every ``next=`` CareDesk accepts.

A ``next`` target is normalised first (``..`` segments resolved, percent-escapes decoded)
and only then checked, so ``/l/<id>/../../l/<other>/`` cannot walk into another launch;
it must be a path of the same launch, with no scheme, host, backslash or control
character (CR/LF would split the Location header). Anything else falls back to the page
the caller names.
"""

from __future__ import annotations

import posixpath
from urllib.parse import unquote, urlsplit

from flask import redirect
from werkzeug.wrappers import Response


def safe_next(launch_id: str, target: str | None) -> str | None:
    """``target`` if it is a page of launch ``launch_id``, normalised; else None."""
    if not target or len(target) > 2048:
        return None
    if any(ord(c) < 0x20 or c == "\x7f" or c == "\\" for c in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        return None
    decoded = unquote(parts.path)
    if any(ord(c) < 0x20 or c == "\\" for c in decoded) or "//" in decoded:
        return None
    path = posixpath.normpath(decoded)
    if decoded.endswith("/") and not path.endswith("/"):
        path += "/"
    prefix = f"/l/{launch_id}/"
    if not (path + ("/" if not path.endswith("/") else "")).startswith(prefix):
        return None
    if path != decoded:
        return None  # a path that needed normalising was not written by one of our pages
    query = f"?{parts.query}" if parts.query else ""
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return path + query + fragment


def back(launch_id: str, target: str | None, fallback: str) -> Response:
    """303 to ``target`` when it is safe (see ``safe_next``), else to ``fallback``."""
    return redirect(safe_next(launch_id, target) or fallback, code=303)
