"""Regenerate the mapper golden files: `.venv/bin/python -m tests.mappers.regen`.

Run from the repository root after an intended change to the mappers or the fixtures,
then read `git diff tests/mappers/golden` line by line before committing: the golden
files are the specification of what CareDesk shows.
"""

from __future__ import annotations

from tests.mappers.golden_cases import GOLDEN_DIR, write_all

if __name__ == "__main__":
    paths = write_all()
    print(f"wrote {len(paths)} golden files to {GOLDEN_DIR}")
