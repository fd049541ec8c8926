#!/usr/bin/env bash
# `make run`: Airflow standalone + campaign database + local SMTP server, demo data seeded.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/embedded-env.sh
mkdir -p "$AIRFLOW_HOME" "$CAMPAIGN_MAILDIR"
bin="$root/.venv/bin"
export PATH="$bin:$PATH"  # standalone starts its components as `airflow ...`

# Secrets are generated on first start and kept in var/ (never committed).
if [ ! -f "$var/secrets.env" ]; then
  umask 077
  {
    echo "CAMPAIGN_TRACKING_SECRET=$("$bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))')"
    echo "ALICE_PASSWORD=$("$bin/python" -c 'import secrets; print(secrets.token_urlsafe(9))')"
    echo "BOB_PASSWORD=$("$bin/python" -c 'import secrets; print(secrets.token_urlsafe(9))')"
  } > "$var/secrets.env"
  umask 022
fi
set -a; source "$var/secrets.env"; set +a
printf '{"alice": "%s", "bob": "%s"}\n' "$ALICE_PASSWORD" "$BOB_PASSWORD" > "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"

"$bin/airflow" db migrate > "$var/airflow-migrate.log" 2>&1 || { tail -20 "$var/airflow-migrate.log"; exit 1; }
"$bin/airflow" pools set campaign_smtp "$CAMPAIGN_SMTP_POOL_SLOTS" "SMTP connections of campaign sends" > /dev/null

if [ ! -f "$var/campaign.db" ]; then
  "$root/bin/campaign" demo
fi

"$bin/python" -m campaign.dev.smtp --port "$SMTP_PORT" --maildir "$CAMPAIGN_MAILDIR" > "$var/devsmtp.log" 2>&1 &
smtp_pid=$!
trap 'kill $smtp_pid 2>/dev/null || true' EXIT

cat <<BANNER

  campaign-send is starting (Airflow standalone, LocalExecutor, SQLite).
  Airflow UI      http://localhost:$AIRFLOW_PORT
  Logins          alice / $ALICE_PASSWORD   (has the Start deliveries role)
                  bob   / $BOB_PASSWORD   (does not: his sends are refused)
  Send a delivery Browse -> Deployment -> the delivery -> Confirm send (or DAG confirm_send -> Trigger
                  -> delivery_id), then answer "OK, send definitively" in the run's Required actions
  Sent mail       $CAMPAIGN_MAILDIR  (Maildir: one file per mail in new/)
  Campaign DB     $var/campaign.db   (CLI: bin/campaign --help)

BANNER
"$bin/airflow" standalone
