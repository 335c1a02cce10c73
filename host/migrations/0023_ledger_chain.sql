-- The ledger chained per posting batch (issue 18 item 4; host/chain.py verifies it, host/ledger.py
-- writes it).
--
-- One row per committed posting batch that wrote a decision (auth_requests) or a transfer, written by
-- the batch's own write statement (same transaction, same round trip). Each writer task of the
-- posting engine (host.engine: writer = partition mod host.writers) keeps a chain of its own, so the
-- writers never wait on each other: chain = the writer's number (0, 1, ...); batches posted outside
-- the engine (the CLI's `card load`, `card unload`..., host.admin) go to chain -1, serialized by a
-- transaction-level advisory lock. Within a chain, seq counts 1, 2, 3 ... and
--
--     hash = SM3(prev_hash || canonical batch), hex; prev_hash = the chain's previous hash (64 zeros
--     for seq 1), in ASCII, followed by the canonical text in UTF-8.
--
-- The canonical batch (host/chain.py ``canonical``), lines joined by "\n":
--   line 1: {"at":<the batch's time, UTC ISO 8601 with microseconds>,"chain":<chain>,"seq":<seq>}
--           (JSON, sorted keys, no spaces)
--   then one line per decision (auth_requests row) sorted by key, each the JSON array (Python's
--           json.dumps defaults: ", " and ": " separators, ASCII only) of its 23 columns in this order:
--           key, mti, txn, proc_code, card_id, merchant_ref, acquirer_id, terminal_id, merchant_id,
--           stan, transmitted, rrn, local_time, amount, currency, response_code, auth_id,
--           balance_field, original_key, reversal_of, posted, reason, reference
--           (char(n) columns without their trailing padding; null for NULL);
--   then one line per transfer sorted by key, the JSON array of its 12 columns: key,
--           debit_account_id, credit_account_id, amount, currency, phase, code, card_id, pending_key,
--           hold_of, original_key, expires_at (ISO 8601 in UTC as Python's isoformat writes it, or null).
--
-- Worked example: chain 0's first batch, one approved purchase of 12.34 CNY by card 7 at merchant 3:
--
--   {"at":"2026-12-02T08:00:00.000000+00:00","chain":0,"seq":1}
--   ["pos:1", "0200", "purchase", "000000", 7, 3, "ACQ001", "T0000001", "M00000000000001", "000001",
--    "1202080000", "000000000001", "1202080000", 1234, "156", "00", "123456", "", null, null, true,
--    null, null]
--   ["pos:1", 21, 9, 1234, "156", "single", "purchase", 7, null, null, null, null]
--
-- (three lines; the second wrapped here) hashed after 64 zeros: tests/host/test_ledger_chain.py
-- recomputes that example with gmssl's SM3 as an oracle.
--
-- decisions / transfers: how many rows of each the batch wrote; row_crc: CRC-32 of each canonical row
-- line (decisions then transfers, 4 bytes big-endian each), only to point `ledger verify` at the edited
-- row of a batch whose hash no longer follows (the SM3 chain is what proves; a CRC proves nothing).
--
-- transfers.batch_id and auth_requests.batch_id name the batch of each row (NULL for rows written
-- outside a posting batch: settlement's payouts, rows before this migration), with BRIN indexes (the
-- ids grow with the table: cheap to maintain on the hot path, enough for verify's range scans).
--
-- Append-only like transfers: a trigger refuses UPDATE, DELETE and TRUNCATE, the application role
-- may only SELECT and INSERT. An edit by the database owner (who can disable the triggers) is found by
-- `payswitch ledger verify`, which names the first batch that does not follow.

CREATE TABLE ledger_batches (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain        int         NOT NULL,
    seq          bigint      NOT NULL CHECK (seq > 0),
    at           timestamptz NOT NULL,
    decisions    int         NOT NULL CHECK (decisions >= 0),
    transfers    int         NOT NULL CHECK (transfers >= 0),
    row_crc      bytea       NOT NULL,
    prev_hash    text        NOT NULL CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
    hash         text        NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
    committed_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (chain, seq)   -- a chain never forks: two writers appending the same seq, one fails
);
CREATE INDEX ledger_batches_at ON ledger_batches (at);

ALTER TABLE transfers ADD COLUMN batch_id bigint;
ALTER TABLE auth_requests ADD COLUMN batch_id bigint;
CREATE INDEX transfers_batch ON transfers USING brin (batch_id);
CREATE INDEX auth_requests_batch ON auth_requests USING brin (batch_id);

CREATE TRIGGER ledger_batches_append_only BEFORE UPDATE OR DELETE ON ledger_batches
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_batches_no_truncate BEFORE TRUNCATE ON ledger_batches
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payswitch_app') THEN
        BEGIN
            GRANT SELECT, INSERT ON ledger_batches TO payswitch_app;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot grant to payswitch_app; the host will run as the connecting user';
        END;
    END IF;
END $$;
