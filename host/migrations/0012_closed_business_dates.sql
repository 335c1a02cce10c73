-- Business dates closed before their cut-over (`payswitch clearing close-day`): a test system, or an
-- operator's choice. A closed date D ends at closed_at and D+1 starts there (specs.clearing
-- business_window); its clearing file can be written at once and is due for payout on the daily cycle
-- the same day. Who closed it and when is kept; a close is never undone (append-only, like the ledger).
CREATE TABLE closed_business_dates (
    business_date date PRIMARY KEY,
    closed_at     timestamptz NOT NULL,
    closed_by     text NOT NULL CHECK (closed_by <> ''),
    recorded_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TRIGGER closed_business_dates_append_only BEFORE UPDATE OR DELETE ON closed_business_dates
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payswitch_app') THEN
        BEGIN
            GRANT SELECT, INSERT ON closed_business_dates TO payswitch_app;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot grant to payswitch_app; the host will run as the connecting user';
        END;
    END IF;
END $$;
