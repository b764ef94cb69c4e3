#!/usr/bin/env bash
# The tests use the real PostgreSQL (127.0.0.1:5432, user postgres, db test) and Redis
# (127.0.0.1:6379). Start them if they are installed but not answering; fail clearly if not.
set -u

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 -U postgres 2>/dev/null; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }
wait_for() { for _ in $(seq 1 60); do "$1" && return 0; sleep 0.5; done; return 1; }

if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "PostgreSQL is not answering on 127.0.0.1:5432; starting it" >&2
    for version in $(ls /etc/postgresql); do
      pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>&1 | sed 's/^/  /' >&2 || true
    done
    wait_for pg_up || { echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1; }
  else
    echo "PostgreSQL is not installed/answering on 127.0.0.1:5432 (needed by the tests: user postgres, database test, trust auth)." >&2
    exit 1
  fi
fi
if ! psql -h 127.0.0.1 -U postgres -d test -Atc 'select 1' >/dev/null 2>&1; then
  psql -h 127.0.0.1 -U postgres -d postgres -c 'CREATE DATABASE test' >/dev/null 2>&1 || {
    echo "PostgreSQL answers but database 'test' is not usable by user postgres" >&2; exit 1; }
fi

if ! redis_up; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "Redis is not answering on 127.0.0.1:6379; starting it" >&2
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null
    wait_for redis_up || { echo "Redis did not come up on 127.0.0.1:6379" >&2; exit 1; }
  else
    echo "Redis is not installed/answering on 127.0.0.1:6379 (needed by the tests)." >&2
    exit 1
  fi
fi
echo "services: PostgreSQL and Redis answer on 127.0.0.1" >&2

# The email tests' mailbox: a throwaway dovecot instance (installed with apt-get when
# missing and root, like Chromium).
bash "$(dirname "$0")/ensure-dovecot.sh" || exit 1
