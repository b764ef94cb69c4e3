"""Pure mapping from FHIR R4 JSON to help-desk context. No I/O, no Flask, no globals.

The one exception is here, once, on import: the hot modules run from their mypyc build
(``scripts/build_native.py``, made by ``make``) when the venv holds one whose manifest
matches every compiled source byte for byte; otherwise, or with
``CAREDESK_NATIVE_MAPPERS=0`` (the tests' coverage and call-count runs), they run as the
Python they are. The source is the one copy of every rule either way.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

NATIVE_DIR = Path(sys.prefix) / "caredesk-native"


def _native_build() -> Path | None:
    """The build's directory, if it may be used: present, and made from these sources."""
    if os.environ.get("CAREDESK_NATIVE_MAPPERS", "1") == "0":
        return None
    try:
        manifest = json.loads((NATIVE_DIR / "manifest.json").read_text())
        here = Path(__file__).parent
        for name, digest in manifest.items():
            if hashlib.sha256((here / f"{name}.py").read_bytes()).hexdigest() != digest:
                return None  # edited since the build: the Python is the truth
    except (OSError, ValueError, AttributeError):
        return None
    return NATIVE_DIR


def _use_native() -> bool:
    found = _native_build()
    if found is None:
        return False
    # The compiled modules share one library, imported by its top-level name.
    if str(found) not in sys.path:
        sys.path.append(str(found))
    __path__.insert(0, str(found / "fhir_mappers"))
    return True


NATIVE = _use_native()
