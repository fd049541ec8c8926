#!/usr/bin/env bash
# Makes sure the Debian packages the test suite drives exist: PostgreSQL server binaries (the
# suite starts its own server), Chromium (the browser test) and docker-compose (it parses
# docker-compose.yaml; no Docker engine is needed), Redis (the Celery scale-out run) and Postfix for its
# smtp-sink (the C SMTP sink of the benchmarks; Postfix itself is left unconfigured and stopped),
# Dovecot (dovecot-imapd: the bounce mailbox tests start their own IMAP server; the packaged
# service is stopped).
# Installs what is missing when running as root; otherwise says what to install. Without
# Chromium, docker-compose, smtp-sink or Dovecot, outside CI, their tests are skipped (in CI they
# fail); PostgreSQL is required.
set -euo pipefail
missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null || missing+=(postgresql)
[ -x /usr/bin/chromium ] || missing+=(chromium fonts-dejavu-core)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v redis-server >/dev/null || missing+=(redis-server)
[ -x /usr/sbin/smtp-sink ] || missing+=(postfix)
command -v dovecot >/dev/null || [ -x /usr/sbin/dovecot ] || missing+=(dovecot-imapd)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing Debian packages for the tests: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Postfix only for smtp-sink: "No configuration" writes no main.cf, so no mail daemon starts.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [[ " ${missing[*]} " == *" postfix "* ]] && postfix status >/dev/null 2>&1; then
    postfix stop >/dev/null 2>&1 || true
  fi
  # Nor is the packaged Dovecot service (Debian starts it where an init system runs).
  if [[ " ${missing[*]} " == *" dovecot-imapd "* ]] && command -v doveadm >/dev/null; then
    doveadm stop >/dev/null 2>&1 || true
  fi
  # The packaged PostgreSQL cluster is not needed: tests start their own servers on free ports.
  if command -v pg_ctlcluster >/dev/null; then
    for cluster in /etc/postgresql/*/main; do
      [ -d "$cluster" ] && pg_ctlcluster "$(basename "$(dirname "$cluster")")" main stop 2>/dev/null || true
    done
  fi
  exit 0
fi
echo "Missing Debian packages for the tests: ${missing[*]} (apt-get install ${missing[*]})." >&2
[[ " ${missing[*]} " == *" postgresql "* ]] && exit 1
exit 0
