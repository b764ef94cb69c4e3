"""Compile the mappers' hot modules with mypyc into the venv (issue 16 §2).

    python scripts/build_native.py DEST

The tolerant mapping spends its time in the interpreter's own work (a call, a dict read,
a type test at a time), not in anything a cache removes: compiled by mypyc, the same
source maps the bench population in two thirds of the time. The source stays the one
copy of every rule: this script copies the listed modules into a scratch directory,
compiles them there, and puts the extension modules under DEST with a manifest of the
SHA-256 of each source it compiled. ``fhir_mappers/__init__.py`` uses DEST only while
every listed source still matches its manifest, so an edited module is never served
from a stale build: it runs as Python until the next build.

Records (the frozen dataclasses with ``quick_init``) stay Python classes under mypyc
(a class decorator it does not know makes a class non-native), so their pickling,
equality and ``dataclasses.replace`` are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "fhir_mappers"
# What `build_context`, `to_visits` and the board's mapping run through; the R4B
# validation (pydantic's own compiled code does that work) and bundle reading stay Python.
MODULES = (
    "fhirutil",
    "names",
    "issues",
    "flags",
    "contact",
    "patient",
    "appointment",
    "coverage",
    "context",
)
MANIFEST = "manifest.json"
GROUP = "caredesk_mappers"


def source_digests(root: Path = ROOT) -> dict[str, str]:
    return {
        name: hashlib.sha256((root / PACKAGE / f"{name}.py").read_bytes()).hexdigest()
        for name in MODULES
    }


def build(dest: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="caredesk-mypyc-") as scratch:
        work = Path(scratch)
        shutil.copytree(ROOT / PACKAGE, work / PACKAGE)
        sources = [f"{PACKAGE}/{name}.py" for name in MODULES]
        # What the `mypyc` command does, with a group name of our own for the shared
        # library (the command names it after a hash of the module list).
        setup = (
            "from setuptools import setup\n"
            "from mypyc.build import mypycify\n"
            f"setup(name={GROUP!r}, ext_modules=mypycify({sources!r}, opt_level='3',"
            f" group_name={GROUP!r}))\n"
        )
        (work / "setup.py").write_text(setup)
        subprocess.run(
            [sys.executable, "setup.py", "build_ext", "--inplace"],
            cwd=work,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        staged = Path(tempfile.mkdtemp(prefix=".native-", dir=dest.parent))
        try:
            (staged / PACKAGE).mkdir()
            for built in work.glob("*.so"):  # the group's shared library, top level
                shutil.copy2(built, staged / built.name)
            for name in MODULES:
                [built] = (work / PACKAGE).glob(f"{name}.*.so")
                shutil.copy2(built, staged / PACKAGE / built.name)
            # The digests of the copy that was compiled, not of the checkout now: a module
            # edited during the build must not pass for the build's source.
            (staged / MANIFEST).write_text(json.dumps(source_digests(work), indent=2) + "\n")
            if dest.exists():
                shutil.rmtree(dest)
            staged.rename(dest)
        finally:
            shutil.rmtree(staged, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python scripts/build_native.py DEST\n")
        return 2
    sys.stderr.write("Compiling the mappers with mypyc (about a minute on 2 cores)...\n")
    build(Path(argv[0]).resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
