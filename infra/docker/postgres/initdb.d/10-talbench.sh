#!/bin/bash
# The stack's two databases, each owned by its own role: Airflow's metadata and MLflow's backend
# store. Run once, on the first start of an empty data folder, by the postgres image's entrypoint
# (the public image's or ours), with the passwords from the stack's .env.
set -euo pipefail
: "${AIRFLOW_DB_PASSWORD:?}" "${MLFLOW_DB_PASSWORD:?}"
for db in airflow mlflow; do
    password_var="${db^^}_DB_PASSWORD"
    # psql's :'var' quotes the password as a literal, whatever characters it holds
    psql -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" --dbname=postgres \
        -v role="$db" -v password="${!password_var}" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"role" OWNER :"role";
SQL
done
