-- The HTTP API's own tables (issue 17; api/README.md). The API never writes the ledger: money moves as
-- ISO 8583 through the switch, and these tables only say who asked for what and what they were told.

-- Clients and their keys (api/auth.py). A key is shown once (`payswitch api client add|rotate`); only
-- its SHA-256 is kept (a key is 32 random bytes: a slow hash adds nothing against guessing and would
-- cost every request). key_prefix is the key's public part (`psk_<prefix>_...`), shown in lists.
-- A rotation keeps the previous key valid until previous_expires_at (a grace period for deployment).
CREATE TABLE api_clients (
    id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                text        NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    scopes              text[]      NOT NULL,
    merchant_id         text,       -- a merchant-bound key pays only at this merchant
    key_prefix          text        NOT NULL UNIQUE,
    key_hash            text        NOT NULL UNIQUE,
    previous_hash       text        UNIQUE,
    previous_expires_at timestamptz,
    rate_per_second     integer     CHECK (rate_per_second > 0), -- NULL: api.rate_per_second
    state               text        NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'revoked')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    rotated_at          timestamptz,
    revoked_at          timestamptz,
    actor               text        NOT NULL CHECK (actor <> '')
);

-- Every POST, attributed to its client (the audit trail of API requests; issue 18 reads it), and the
-- idempotency record: the same (client, key) with the same body gets the stored answer again; with
-- another body 422. Rows older than api.idempotency_hours are purged by `api serve`.
-- state: started (the work began, no answer stored: a payment may be on the wire) | done.
CREATE TABLE api_requests (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id    bigint      NOT NULL REFERENCES api_clients (id),
    idem_key     text        NOT NULL CHECK (length(idem_key) BETWEEN 1 AND 255),
    method       text        NOT NULL,
    path         text        NOT NULL,
    body_hash    text        NOT NULL,
    state        text        NOT NULL DEFAULT 'started' CHECK (state IN ('started', 'done')),
    status       integer,
    response     jsonb,
    source       text,       -- client address
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    UNIQUE (client_id, idem_key)
);
CREATE INDEX api_requests_created ON api_requests (created_at);

-- The API's money requests (api/payments.py): each is one ISO 8583 request to the switch, written here
-- *before* it is sent (the write-ahead that lets a retry find it, or the sweeper reverse it), then its
-- answer. iso_key = DE7 + DE11 (+ DE41) as sent: the switch's duplicate key with DE32 = api.institution_id
-- and the MTI, so the same request sent again gets the switch's first answer from its journal.
-- request_sealed: the H2H request's fields sealed under the issuer's data key (host.pii.seal: it holds
-- the PAN of a card-not-present purchase), so it can be sent again or reversed after a restart.
CREATE TABLE api_payments (
    id            text        PRIMARY KEY,             -- pay_..., load_..., the resource id
    client_id     bigint      NOT NULL REFERENCES api_clients (id),
    request_id    bigint      REFERENCES api_requests (id),
    kind          text        NOT NULL CHECK (kind IN ('purchase', 'refund', 'reversal', 'load')),
    state         text        NOT NULL DEFAULT 'sent'
                  CHECK (state IN ('sent', 'approved', 'declined', 'failed', 'reversed')),
    mti           text        NOT NULL,
    de7           text        NOT NULL,
    stan          text        NOT NULL,
    terminal_id   text        NOT NULL,
    merchant_id   text        NOT NULL,
    rrn           text        NOT NULL,
    amount        bigint      NOT NULL CHECK (amount >= 0),
    currency      text        NOT NULL,
    card_id       bigint,
    card_masked   text,
    original_id   text        REFERENCES api_payments (id), -- a refund's or reversal's payment
    reference     text,       -- the client's reference (a load's funding reference)
    response_code text,
    auth_code     text,
    reason        text,
    request_sealed text       NOT NULL,
    metadata      jsonb       NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    answered_at   timestamptz,
    UNIQUE (de7, stan, terminal_id, mti)
);
CREATE INDEX api_payments_unanswered ON api_payments (created_at) WHERE state = 'sent';
CREATE INDEX api_payments_client ON api_payments (client_id, created_at);

-- STANs of the API's link: one sequence, so several API processes and restarts never reuse one within
-- a DE7 second (the switch's duplicate key).
CREATE SEQUENCE api_stan MINVALUE 1 MAXVALUE 999999 CYCLE;

-- The keys of the API's H2H link to the switch (under the LMK; `payswitch api link set`, `demo seed`):
-- the same ZPK and ZAK as the switch's inbound link for api.institution_id. One row.
CREATE TABLE api_link (
    id      boolean     PRIMARY KEY DEFAULT true CHECK (id),
    scheme  text        NOT NULL CHECK (scheme IN ('3des', 'sm4')),
    zpk     text        NOT NULL,
    zak     text,
    set_at  timestamptz NOT NULL DEFAULT now(),
    actor   text        NOT NULL
);

-- Webhook subscriptions (api/webhooks.py): a client's URL and the event types it wants. The signing
-- secret is sealed (host.pii.seal) because signing needs it in clear; it is shown once at creation.
-- after_event: events up to this id are fanned out into api_deliveries already.
CREATE TABLE api_webhooks (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id   bigint      NOT NULL REFERENCES api_clients (id),
    url         text        NOT NULL,
    event_types text[]      NOT NULL,
    secret_enc  text        NOT NULL,
    state       text        NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'disabled')),
    after_event bigint      NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One event to one subscription: delivered at least once, in event order per card, retried with
-- exponential backoff for api.webhook_retry_hours, then parked (resend with `payswitch api events resend`).
CREATE TABLE api_deliveries (
    webhook_id   bigint      NOT NULL REFERENCES api_webhooks (id),
    event_id     bigint      NOT NULL REFERENCES events (id),
    card_id      bigint,
    state        text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'parked')),
    attempts     integer     NOT NULL DEFAULT 0,
    next_at      timestamptz NOT NULL DEFAULT now(),
    last_status  integer,
    last_error   text,
    delivered_at timestamptz,
    PRIMARY KEY (webhook_id, event_id)
);
CREATE INDEX api_deliveries_due ON api_deliveries (next_at) WHERE state = 'pending';

-- The API connects as the host's application role (it calls the host's functions), which may not
-- UPDATE or DELETE the ledger; its own tables it may change.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payswitch_app') THEN
        BEGIN
            GRANT SELECT, INSERT, UPDATE, DELETE ON api_clients, api_requests, api_payments, api_link,
                api_webhooks, api_deliveries TO payswitch_app;
            GRANT USAGE, SELECT ON SEQUENCE api_stan TO payswitch_app;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot grant to payswitch_app; the API will run as the connecting user';
        END;
    END IF;
END $$;
