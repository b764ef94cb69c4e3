"""RFC 6902 JSON Patch, as FHIR's `PATCH [type]/[id]` with `application/json-patch+json`.

Small and strict: a patch that is not a list of operations is `PatchError(malformed=True)`
(400); a patch that cannot be applied (missing path, failed `test`) is `PatchError` (422).
The document is never changed in place.
"""

from __future__ import annotations

import copy
from typing import Any


class PatchError(ValueError):
    def __init__(self, message: str, *, malformed: bool = False) -> None:
        super().__init__(message)
        self.malformed = malformed


def apply_patch(document: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise PatchError("a JSON Patch is a list of operations", malformed=True)
    doc = copy.deepcopy(document)
    for op in operations:
        doc = _apply(doc, op)
    return doc


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise PatchError(f"bad JSON pointer {path!r}", malformed=True)
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    target = doc
    for part in parts[:-1]:
        target = _child(target, part, path)
    return target


def _child(container: Any, key: str, path: str) -> Any:
    if isinstance(container, dict) and key in container:
        return container[key]
    if isinstance(container, list):
        return container[_index(container, key, path, allow_end=False)]
    raise PatchError(f"path {path} does not exist")


def _index(container: list[Any], key: str, path: str, *, allow_end: bool) -> int:
    if key == "-" and allow_end:
        return len(container)
    if not key.isdigit() or (len(key) > 1 and key.startswith("0")):
        raise PatchError(f"bad array index in {path}")
    index = int(key)
    if index > len(container) or (index == len(container) and not allow_end):
        raise PatchError(f"array index out of range in {path}")
    return index


def _get(doc: Any, path: str) -> Any:
    value = doc
    for part in _pointer(path):
        value = _child(value, part, path)
    return value


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts, path)
    if isinstance(parent, dict):
        parent[parts[-1]] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, parts[-1], path, allow_end=True), value)
    else:
        raise PatchError(f"cannot add below a value at {path}")
    return doc


def _replace(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts, path)
    _child(parent, parts[-1], path)  # must exist
    if isinstance(parent, dict):
        parent[parts[-1]] = value
    else:
        parent[int(parts[-1])] = value
    return doc


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        raise PatchError("cannot remove the whole resource")
    parent = _parent(doc, parts, path)
    _child(parent, parts[-1], path)  # must exist
    if isinstance(parent, dict):
        del parent[parts[-1]]
    else:
        del parent[int(parts[-1])]
    return doc


def _apply(doc: Any, op: Any) -> Any:
    if not isinstance(op, dict) or not isinstance(op.get("op"), str) or "path" not in op:
        raise PatchError("each operation needs op and path", malformed=True)
    name, path = op["op"], op["path"]
    if name in ("add", "replace", "test") and "value" not in op:
        raise PatchError(f"{name} needs a value", malformed=True)
    if name in ("move", "copy") and not isinstance(op.get("from"), str):
        raise PatchError(f"{name} needs from", malformed=True)
    if name == "add":
        return _add(doc, path, copy.deepcopy(op["value"]))
    if name == "remove":
        return _remove(doc, path)
    if name == "replace":
        return _replace(doc, path, copy.deepcopy(op["value"]))
    if name == "test":
        if _get(doc, path) != op["value"]:
            raise PatchError(f"test failed at {path}")
        return doc
    if name == "copy":
        return _add(doc, path, copy.deepcopy(_get(doc, op["from"])))
    if name == "move":
        if path.startswith(op["from"] + "/"):
            raise PatchError("cannot move a value into itself")
        value = _get(doc, op["from"])
        return _add(_remove(doc, op["from"]), path, value)
    raise PatchError(f"unknown op {name!r}", malformed=True)
