-- The event outbox (issue 17 item 5; ops/outbox.py writes it, api/webhooks.py delivers it).
--
-- A row is written in the same transaction as the change it reports: the ledger batch's decisions
-- (authorization.approved / .declined, card.balance_low) with one more bulk insert, a card's state
-- change beside its card_events row, a KYC decision beside its kyc_events row, a settlement report when
-- its run commits. Nothing is written "later", so an event exists exactly when its change committed.
--
-- * id: the event's order of commit within one writer (the delivery order per card is id order).
-- * type: one of ops.outbox.EVENT_TYPES. card_id / merchant_id: what the event concerns, for ordering
--   per card and for a merchant-bound client to see only its merchant's events. payload: the event's
--   data as the webhook sends it (never a PAN, ID number, phone or e-mail: masked forms only).
-- Append-only: delivery state lives with the subscriber (api_deliveries), not here.

CREATE TABLE events (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type        text        NOT NULL CHECK (type <> ''),
    card_id     bigint,
    merchant_id text,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    payload     jsonb       NOT NULL
);
CREATE INDEX events_card ON events (card_id, id) WHERE card_id IS NOT NULL;
CREATE INDEX events_time ON events (occurred_at);

CREATE TRIGGER events_no_update BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payswitch_app') THEN
        BEGIN
            GRANT SELECT, INSERT ON events TO payswitch_app;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot grant to payswitch_app; the host will run as the connecting user';
        END;
    END IF;
END $$;
