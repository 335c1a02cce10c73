-- The idempotency record's attempts (api/envelope.py; api/README.md "Safe retries").
--
-- A request whose answer is not kept (a 5xx, or refused before it did anything: 401, 403, 429) leaves its
-- record 'failed': the same key and body may be sent again, and that retry runs the request again in the
-- same record (same id: the payments code finds its write-ahead api_payments row by it). A record left
-- 'started' by a process that died is run again once it is older than 2 * api.request_timeout_ms.
-- attempt_at is when the current attempt began (created_at stays the first one's: the purge counts from
-- it); attempts counts them.
ALTER TABLE api_requests DROP CONSTRAINT api_requests_state_check;
ALTER TABLE api_requests ADD CONSTRAINT api_requests_state_check
    CHECK (state IN ('started', 'done', 'failed'));
ALTER TABLE api_requests ADD COLUMN attempt_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE api_requests ADD COLUMN attempts integer NOT NULL DEFAULT 1 CHECK (attempts >= 1);

-- The purge deletes records older than api.idempotency_hours; a payment outlives the request that made it
-- (its own row is the payment's record), so its link to the request is cleared rather than blocking it.
ALTER TABLE api_payments DROP CONSTRAINT api_payments_request_id_fkey;
ALTER TABLE api_payments ADD CONSTRAINT api_payments_request_id_fkey
    FOREIGN KEY (request_id) REFERENCES api_requests (id) ON DELETE SET NULL;
