-- Grafana's read-only role (deploy/grafana): SELECT on the read_models schema, its present
-- and future tables, and nothing else. Roles are cluster-wide, so the role may exist already
-- (another database on the server, a DBA, a second run): it is created only when missing,
-- and created NOLOGIN, so that no password is ever in a migration; a deployment gives it a
-- login (deploy/grafana/reader-login.sql, run by docker-compose's grafana-reader). Running
-- this file again changes nothing.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'iotp_grafana_reader') THEN
        BEGIN
            -- A dashboard cannot hold many sessions or run away with the server, and even a
            -- privilege granted by mistake cannot write.
            CREATE ROLE iotp_grafana_reader NOLOGIN CONNECTION LIMIT 10;
            ALTER ROLE iotp_grafana_reader SET default_transaction_read_only = on;
            ALTER ROLE iotp_grafana_reader SET statement_timeout = '30s';
        EXCEPTION
            -- Another database's migration created it a moment ago.
            WHEN duplicate_object OR unique_violation THEN NULL;
            -- A migrator without CREATEROLE must not block the platform for an optional
            -- service: a DBA creates the role, then the grants below apply on a later run.
            WHEN insufficient_privilege THEN
                RAISE WARNING 'iotp_grafana_reader not created (needs CREATEROLE); create it'
                    ' with CREATE ROLE iotp_grafana_reader NOLOGIN and run this file again'
                    ' (read_models/migrations/0030_grafana_reader.sql)';
                RETURN;
        END;
    END IF;
    GRANT USAGE ON SCHEMA read_models TO iotp_grafana_reader;
    GRANT SELECT ON ALL TABLES IN SCHEMA read_models TO iotp_grafana_reader;
    -- Tables that later read-store migrations create (as the migrating role) are readable too.
    ALTER DEFAULT PRIVILEGES IN SCHEMA read_models GRANT SELECT ON TABLES TO iotp_grafana_reader;
END
$$;
