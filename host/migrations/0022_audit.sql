-- The record nobody can edit (issue 18 item 4; ops/audit.py writes and verifies it).
--
-- One row per state-changing action from the console, the API or the CLI: who (actor: an operator's
-- name, `api:<client>`, `cli:<unix user>`), their role, the client address, the action (a dotted name,
-- e.g. card.freeze), its target (e.g. card:504), the state before and after (JSON, masked forms only:
-- never a PAN, PIN, key, ID number, phone or e-mail), the reason, and when.
--
-- Chained: hash = SM3(prev_hash || canonical row) in hex, prev_hash the previous row's hash (64 zeros
-- for the first). Rows are written one at a time under a transaction-level advisory lock, so id order
-- is chain order. Append-only like transfers: a trigger refuses UPDATE, DELETE and TRUNCATE, and the
-- application role may only SELECT and INSERT. An edit by the database owner (who can drop the
-- trigger) is found by `payswitch audit verify`, which names the first row whose hash does not follow.

CREATE TABLE audit_log (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text        NOT NULL CHECK (actor <> ''),
    role       text        NOT NULL DEFAULT '',
    source     text        NOT NULL DEFAULT '',   -- client address ('' for the CLI)
    action     text        NOT NULL CHECK (action <> ''),
    target     text        NOT NULL DEFAULT '',
    before     jsonb,
    after      jsonb,
    reason     text        NOT NULL DEFAULT '',
    outcome    text        NOT NULL DEFAULT 'done' CHECK (outcome IN ('done', 'refused', 'requested',
                                                                     'approved', 'rejected', 'failed')),
    prev_hash  text        NOT NULL CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
    hash       text        NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$')
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_target ON audit_log (target, id);
CREATE INDEX audit_log_actor ON audit_log (actor, id);

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payswitch_app') THEN
        BEGIN
            GRANT SELECT, INSERT ON audit_log TO payswitch_app;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot grant to payswitch_app; the host will run as the connecting user';
        END;
    END IF;
END $$;
