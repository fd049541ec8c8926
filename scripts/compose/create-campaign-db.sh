#!/usr/bin/env bash
# First start of the postgres service: the campaign database, separate from Airflow's metadata,
# and the tracking service's role (its privileges: airflow-init's `campaign grant-tracking`).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname airflow <<SQL
CREATE USER "$CAMPAIGN_DB_USER" WITH PASSWORD '$CAMPAIGN_DB_PASSWORD';
CREATE DATABASE "$CAMPAIGN_DB_NAME" OWNER "$CAMPAIGN_DB_USER";
CREATE USER "$CAMPAIGN_TRACKING_DB_USER" WITH PASSWORD '$CAMPAIGN_TRACKING_DB_PASSWORD';
SQL
