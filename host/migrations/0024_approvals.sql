-- Four eyes (issue 18 item 2; host/approvals.py requests, approves and rejects).
--
-- A manual load or unload above console.four_eyes_minor, a card's limit change, a cardholder's tier
-- change, a forfeit and a merchant's fee change are requested by one operator and take effect only
-- when a supervisor (or admin, or the CLI) other than the requester approves. One row per request:
-- what (kind, target such as card:504 / cardholder:7 / merchant:<DE42>, params: amounts in minor units
-- and other masked values only, never a PAN, PIN, key, ID number, phone or e-mail), who asked with
-- which role, when and why; then who decided, when and why, and the change's result (or its error).
--
-- state: requested -> approved (the change was made) | failed (approved, but the change was refused:
-- result.error says why) | rejected | expired. An approver first claims the request (claimed_by,
-- claimed_at): a second approver meanwhile is told it is being approved; a claim older than five
-- minutes (a crashed approver) may be taken again, and loads and unloads are keyed by the approval's
-- id (host.admin's references), so a retry never moves the money twice.

CREATE TABLE approvals (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text        NOT NULL CHECK (kind IN ('load', 'unload', 'limits', 'tier', 'forfeit',
                                                         'merchant_fee')),
    target          text        NOT NULL CHECK (target <> ''),
    params          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    requested_by    text        NOT NULL CHECK (requested_by <> ''),
    requested_role  text        NOT NULL DEFAULT '',
    requested_at    timestamptz NOT NULL DEFAULT now(),
    reason          text        NOT NULL DEFAULT '',
    state           text        NOT NULL DEFAULT 'requested'
                                CHECK (state IN ('requested', 'approved', 'rejected', 'failed', 'expired')),
    claimed_by      text,
    claimed_at      timestamptz,
    decided_by      text,
    decided_role    text,
    decided_at      timestamptz,
    decision_reason text        NOT NULL DEFAULT '',
    result          jsonb,
    CHECK ((state = 'requested') = (decided_at IS NULL)),
    CHECK (decided_by IS NULL OR decided_by <> requested_by)
);
CREATE INDEX approvals_state ON approvals (state, id);
CREATE INDEX approvals_target ON approvals (target, id);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payswitch_app') THEN
        BEGIN
            GRANT SELECT, INSERT, UPDATE ON approvals TO payswitch_app;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot grant to payswitch_app; the host will run as the connecting user';
        END;
    END IF;
END $$;
