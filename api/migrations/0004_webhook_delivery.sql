-- Webhook delivery (api/webhooks.py): what the dispatcher needs beside 0001's api_deliveries.
--
-- * window_from: when this delivery's retry window began (its fan-out, or a resend): it is retried with
--   backoff until window_from + api.webhook_retry_hours, then parked.
-- * last_attempt_at: when it was last sent (shown by `api events list`).
-- A claimed delivery's next_at is moved past its attempt (now + timeout + a margin): that is the lease
-- that keeps another API process from sending it at the same time; if the process dies, the delivery is
-- due again when the lease runs out (at least once).
-- api_deliveries_head: the delivery order per card per subscription (an event of a card waits while an
-- earlier one of that card to that subscription is pending).
ALTER TABLE api_deliveries
    ADD COLUMN window_from     timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN last_attempt_at timestamptz;
CREATE INDEX api_deliveries_head ON api_deliveries (webhook_id, card_id, event_id)
    WHERE state = 'pending' AND card_id IS NOT NULL;
CREATE INDEX api_deliveries_event ON api_deliveries (event_id);
CREATE INDEX api_webhooks_client ON api_webhooks (client_id, id);
