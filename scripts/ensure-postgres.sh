#!/usr/bin/env bash
# Makes sure PostgreSQL server binaries exist for the test suite (it starts its own server).
# Installs Debian's postgresql when missing and we may; otherwise says what to install.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing PostgreSQL server (Debian package postgresql) for the tests..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  # The packaged cluster is not needed: tests start their own server in a temporary directory.
  if command -v pg_ctlcluster >/dev/null; then
    for cluster in /etc/postgresql/*/main; do
      [ -d "$cluster" ] && pg_ctlcluster "$(basename "$(dirname "$cluster")")" main stop 2>/dev/null || true
    done
  fi
  exit 0
fi
echo "PostgreSQL server binaries (initdb, pg_ctl) are missing; install Debian's 'postgresql' package." >&2
exit 1
