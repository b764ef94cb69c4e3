#!/usr/bin/env bash
# The email tests read a real mailbox over IMAP: Debian's dovecot, run as a throwaway
# instance of our own (its own config, mail folder, one user) on 127.0.0.1, never the
# system's dovecot service. Installs dovecot-imapd with apt-get when it is missing and we
# are root (as ensure-chromium.sh does for Chromium); starts the instance if it is not
# answering. Idempotent: a second run with the instance up does nothing.
#
#   CAREDESK_TEST_IMAP_DIR   where the instance lives (default /tmp/caredesk-dovecot)
#   CAREDESK_TEST_IMAP_PORT  its port (default 10143)
# The tests log in as caredesk-test / caredesk-test-password (tests/jobs/mailbox.py).
set -u

DIR="${CAREDESK_TEST_IMAP_DIR:-/tmp/caredesk-dovecot}"
PORT="${CAREDESK_TEST_IMAP_PORT:-10143}"
USER_NAME=caredesk-test
PASSWORD=caredesk-test-password

imap_up() {
  python3 - "$PORT" <<'PY' 2>/dev/null
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as s:
    sys.exit(0 if s.recv(200).startswith(b"* OK") else 1)
PY
}

imap_up && exit 0

if ! command -v dovecot >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's dovecot-imapd for the email tests" >&2
    export DEBIAN_FRONTEND=noninteractive
    # The package's own service is not what the tests use; policy-rc.d keeps it stopped.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get update -qq >/dev/null && apt-get install -y -qq dovecot-imapd >/dev/null
    status=$?
    rm -f /usr/sbin/policy-rc.d
    [ $status = 0 ] || { echo "apt-get install dovecot-imapd failed" >&2; exit 1; }
  else
    echo "The email tests need Debian's dovecot: run 'sudo apt-get install -y dovecot-imapd'." >&2
    exit 1
  fi
fi

# Mail processes never run as root: as root the mailbox belongs to the packaged
# 'dovecot' user; otherwise to whoever runs the tests.
if [ "$(id -u)" = "0" ]; then
  MAIL_USER=dovecot
  LOGIN_USER=dovenull
else
  MAIL_USER=$(id -un)
  LOGIN_USER=$MAIL_USER
fi
MAIL_UID=$(id -u "$MAIL_USER")
MAIL_GID=$(id -g "$MAIL_USER")

mkdir -p "$DIR/run" "$DIR/state" "$DIR/mail" "$DIR/home"
chmod 755 "$DIR"
chown -R "$MAIL_UID:$MAIL_GID" "$DIR/mail" "$DIR/home" 2>/dev/null || true
printf '%s:{PLAIN}%s::::::\n' "$USER_NAME" "$PASSWORD" > "$DIR/users"
cat > "$DIR/dovecot.conf" <<EOF
# A throwaway IMAP server for CareDesk's tests (scripts/ensure-dovecot.sh).
base_dir = $DIR/run
state_dir = $DIR/state
log_path = $DIR/dovecot.log
instance_name = caredesk-test
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 1
mail_location = maildir:$DIR/mail/%u
mail_privileged_group =
default_login_user = $LOGIN_USER
default_internal_user = $MAIL_USER
default_internal_group = $(id -gn "$MAIL_USER")
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $DIR/users
}
userdb {
  driver = static
  args = uid=$MAIL_UID gid=$MAIL_GID home=$DIR/home/%u
}
service imap-login {
  chroot =
  inet_listener imap {
    address = 127.0.0.1
    port = $PORT
  }
  inet_listener imaps {
    port = 0
  }
}
service anvil {
  chroot =
}
service stats {
  unix_listener stats-writer {
    mode = 0666
  }
}
EOF

dovecot -c "$DIR/dovecot.conf" >"$DIR/start.log" 2>&1 || { sed "s/^/  /" "$DIR/start.log" >&2; }
for _ in $(seq 1 40); do imap_up && { echo "services: dovecot answers on 127.0.0.1:$PORT" >&2; exit 0; }; sleep 0.25; done
echo "dovecot did not come up on 127.0.0.1:$PORT; its log:" >&2
tail -20 "$DIR/dovecot.log" >&2 2>/dev/null
exit 1
