-- Cash-outs paid by settlement runs (issue 15 item 2; settlement/cashouts.py): one row per unload paid
-- out to its cardholder, written in the run's transaction together with its host transfer
-- (code 'cash_out_payout', key 'cashout:' || unload_key). reference and unload_key are unique: an
-- unload is paid at most once, whatever the runs.
CREATE TABLE settlement_cashouts (
    id          bigserial   PRIMARY KEY,
    run_id      bigint      NOT NULL REFERENCES settlement_runs (id),
    reference   text        NOT NULL UNIQUE,   -- the operator's `card unload --reference`
    unload_key  text        NOT NULL UNIQUE,   -- host transfers.key of the unload ('unload:' || reference)
    card_id     bigint      NOT NULL,          -- host cards.id
    pan_masked  text        NOT NULL,
    currency    char(3)     NOT NULL,
    amount      bigint      NOT NULL CHECK (amount > 0),
    unloaded_at timestamptz NOT NULL,
    paid_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (unload_key = 'unload:' || reference)
);
CREATE INDEX settlement_cashouts_run ON settlement_cashouts (run_id);
