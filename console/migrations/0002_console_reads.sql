-- The console (served by `api serve`, connected as payswitch_app) shows the switch's links, routes and
-- store-and-forward queue and the settlement runs with their payouts and cash-outs: read-only. SELECT
-- only, on only those tables; every change to them stays with the switch and settlement commands.
-- (switch_links holds its keys under the LMK, as terminals holds the TMKs the app already reads; the
-- console shows check values computed by the HSM, never a key.)
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payswitch_app') THEN
        BEGIN
            GRANT SELECT ON switch_links, switch_routes, switch_config, switch_saf TO payswitch_app;
            GRANT SELECT ON settlement_runs, settlement_payouts, settlement_cashouts TO payswitch_app;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot grant to payswitch_app; the console will run as the connecting user';
        END;
    END IF;
END $$;
