#!/bin/sh
# Patroni's post_bootstrap (runs once, on the member that initialises the cluster, as postgres):
# the role and database the services use. $1 is the superuser's connection URL Patroni hands over.
#
# payswitch owns the database and runs `payswitch db migrate`; CREATEROLE lets the first host
# migration create payswitch_app (NOLOGIN, no UPDATE/DELETE on the ledger) and grant it to payswitch,
# the role the host and the API SET ROLE to (ops/pgpool.py). Its password comes from
# PAYSWITCH_DB_PASSWORD in /etc/patroni/env.conf and is never written to a log.
set -eu
: "${PAYSWITCH_DB_PASSWORD:?set PAYSWITCH_DB_PASSWORD in /etc/patroni/env.conf}"
psql "$1" -v ON_ERROR_STOP=1 -q -v pw="$PAYSWITCH_DB_PASSWORD" <<'SQL'
CREATE ROLE payswitch LOGIN CREATEROLE PASSWORD :'pw';
CREATE DATABASE payswitch OWNER payswitch ENCODING 'UTF8' TEMPLATE template0;
REVOKE ALL ON DATABASE payswitch FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE payswitch TO payswitch;
\connect payswitch
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
ALTER SCHEMA public OWNER TO payswitch;
SQL
