#!/usr/bin/env bash
# Until the first release there is no deployed database, so the schema is one baseline
# migration regenerated from helpdesk/models.py. After the first release: add revisions
# (`alembic revision --autogenerate`) instead, never rewrite 0001.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
rm -f helpdesk/migrations/versions/0001_*.py
.venv/bin/python - "$tmp" <<'PY'
import sys
from alembic import command
from helpdesk.migrate import alembic_config
cfg = alembic_config(f"sqlite:///{sys.argv[1]}/baseline.db")
command.revision(cfg, message="baseline: the help-desk store", autogenerate=True, rev_id="0001")
PY
.venv/bin/ruff check --fix -q helpdesk/migrations/versions || true
.venv/bin/ruff format -q helpdesk/migrations/versions
sed -i '/^Create Date:/d' helpdesk/migrations/versions/0001_*.py
rm -rf "$tmp"
echo "regenerated helpdesk/migrations/versions/0001_*.py"
