-- Write-ahead record of every request that moves money upstream (0100/0200/0220 and the 0400 that
-- reverses an approved original), committed BEFORE its bytes go to the issuer. Its answer is the
-- request's switch_journal row (same link + link_de7 + link_stan), so nothing here is ever updated:
-- a row without a journal row at start-up is a request whose outcome died with the process, and
-- recovery turns it into a reversal advice (switch_saf) plus a journal row, and deletes it, in one
-- transaction. Rows of answered requests are deleted in the background. No PAN, PIN or track.
CREATE TABLE switch_write_ahead (
    created_at  timestamptz NOT NULL DEFAULT now(),
    dedup_key   text        NOT NULL,   -- the journal row's key when the answer is kept
    channel     text        NOT NULL,   -- pos-3des, pos-sm4, h2h:<link>
    mti         text        NOT NULL,   -- the request as it came in
    txn_type    text        NOT NULL,
    proc_code   text,                   -- DE3
    terminal_id text,                   -- DE41
    merchant_id text,                   -- DE42
    batch_no    integer,
    stan        text,                   -- DE11 as it came in
    amount      bigint,                 -- DE4
    currency    text,                   -- DE49
    pan_masked  text,
    rrn         text,                   -- DE37 sent upstream
    original    text,                   -- as switch_journal.original
    link        text        NOT NULL,   -- the upstream request: link, MTI, DE7, DE11, DE32
    link_mti    text        NOT NULL,
    link_stan   text        NOT NULL,
    link_de7    text        NOT NULL,
    link_de32   text        NOT NULL,
    reverses    text                    -- a reversal: DE90 of the upstream original its 0420 names
);
-- Recovery and pruning read the table whole (it holds about a minute of requests); the journal side of
-- their join is bounded by created_at through the journal's BRIN index. No index here: a row costs
-- one heap insert.
