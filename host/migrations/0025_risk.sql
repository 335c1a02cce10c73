-- Risk monitoring (issue 18 item 5; host/risk.py writes it, console/views/risk.py shows and acts on it).
--
-- The risk monitor (a background task of `api serve`) reads the event outbox (events, 0020) after its
-- cursor, runs the rules over a window of decided authorizations and stores what they raise here, with a
-- `risk.alert` event in the same transaction (the webhook dispatcher sends it).
--
-- * risk_alerts: one row per alert. rule: which rule (host.risk.RULES). dedupe_key: rule and subject
--   (card, terminal, merchant and day): at most one open alert per key (the partial unique index), and
--   none raised again within the rule's window. card_id / merchant_id (DE42) / terminal_id (DE41): what
--   it concerns, for the one-click actions. detail: the rule's evidence (counts, amounts, masked PAN,
--   stores; never a PAN, PIN, name, phone or e-mail). event_id: the decision's event that raised it.
--   state: open -> acknowledged | acted | dismissed (acted: an operator froze the card or disabled the
--   terminal from it; action names which), acted_by / acted_at: who and when.
-- * risk_cursor: one row, the last event id read (holes still in flight are read again, as the
--   webhook dispatcher does).

CREATE TABLE risk_alerts (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule        text        NOT NULL CHECK (rule <> ''),
    dedupe_key  text        NOT NULL CHECK (dedupe_key <> ''),
    card_id     bigint,
    merchant_id text,
    terminal_id text,
    detail      jsonb       NOT NULL DEFAULT '{}',
    event_id    bigint,
    raised_at   timestamptz NOT NULL DEFAULT now(),
    state       text        NOT NULL DEFAULT 'open'
                CHECK (state IN ('open', 'acknowledged', 'acted', 'dismissed')),
    acted_by    text,
    acted_at    timestamptz,
    action      text,
    CHECK ((state = 'open') = (acted_at IS NULL))
);
CREATE UNIQUE INDEX risk_alerts_open_key ON risk_alerts (dedupe_key) WHERE state = 'open';
CREATE INDEX risk_alerts_key_time ON risk_alerts (dedupe_key, raised_at);
CREATE INDEX risk_alerts_state ON risk_alerts (state, id);
CREATE INDEX risk_alerts_card ON risk_alerts (card_id, id) WHERE card_id IS NOT NULL;

CREATE TABLE risk_cursor (
    one        boolean     PRIMARY KEY DEFAULT true CHECK (one),
    last_event bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Start at the newest event: history before the monitor existed is not alerted on.
INSERT INTO risk_cursor (last_event) SELECT coalesce(max(id), 0) FROM events;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payswitch_app') THEN
        BEGIN
            GRANT SELECT, INSERT, UPDATE ON risk_alerts TO payswitch_app;
            GRANT SELECT, UPDATE ON risk_cursor TO payswitch_app;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot grant to payswitch_app; the host will run as the connecting user';
        END;
    END IF;
END $$;
