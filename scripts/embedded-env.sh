# Environment of the embedded default (sourced by run-embedded.sh): Airflow on SQLite with
# LocalExecutor, the campaign database on SQLite, a local SMTP server storing mail in a Maildir.
root="${root:?}"
var="$root/var"
export AIRFLOW_HOME="$var/airflow"
export AIRFLOW__CORE__DAGS_FOLDER="$root/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$root/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="alice:admin,bob:user"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$var/airflow/passwords.json"
export AIRFLOW_PORT="${AIRFLOW_PORT:-8080}"
export AIRFLOW__API__PORT="$AIRFLOW_PORT"
export AIRFLOW__API__BASE_URL="http://localhost:$AIRFLOW_PORT"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://localhost:$AIRFLOW_PORT/execution/"
export SMTP_PORT="${SMTP_PORT:-8025}"
export PYTHONPATH="$root/include${PYTHONPATH:+:$PYTHONPATH}"
export CAMPAIGN_DB_URL="sqlite:///$var/campaign.db"
export AIRFLOW_CONN_CAMPAIGN_DB="{\"conn_type\": \"sqlite\", \"host\": \"$var/campaign.db\"}"
export AIRFLOW_CONN_CAMPAIGN_SMTP="{\"conn_type\": \"smtp\", \"host\": \"127.0.0.1\", \"port\": $SMTP_PORT, \"extra\": {\"disable_tls\": true, \"disable_ssl\": true, \"timeout\": 30, \"retry_limit\": 2}}"
export CAMPAIGN_TRACKING_BASE_URL="http://localhost:$AIRFLOW_PORT/campaign"
export CAMPAIGN_MAILDIR="$var/maildir"
# Slots of pool campaign_smtp: run-embedded.sh creates the pool with it, plan_chunks sizes chunks by it.
export CAMPAIGN_SMTP_POOL_SLOTS="${CAMPAIGN_SMTP_POOL_SLOTS:-4}"
