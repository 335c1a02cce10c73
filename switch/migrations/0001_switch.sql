-- The switch's own state. Terminals, merchants and their TMKs belong to the host (the system of
-- record); the switch only READS those tables. Everything here is written by the switch alone.

-- Outbound links to issuer hosts and inbound links from other acquirers. Keys are under the LMK.
CREATE TABLE switch_links (
    name            text        PRIMARY KEY,
    direction       text        NOT NULL CHECK (direction IN ('out', 'in')),
    host            text        NOT NULL DEFAULT '',      -- out: where to connect
    port            integer     NOT NULL DEFAULT 0,
    connections     integer     NOT NULL DEFAULT 2 CHECK (connections BETWEEN 1 AND 64),
    institution_id  text        NOT NULL DEFAULT '',      -- in: the acquirer's DE32
    scheme          text        NOT NULL CHECK (scheme IN ('3des', 'sm4')),
    zpk             text        NOT NULL,                 -- link PIN key under LMK (U.../S...)
    zak             text,                                 -- link MAC key under LMK, NULL = no MAC
    enabled         boolean     NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- BIN ranges: a PAN whose first len(bin_low) digits lie in [bin_low, bin_high] goes to link.
CREATE TABLE switch_routes (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bin_low     text        NOT NULL CHECK (bin_low ~ '^[0-9]{1,19}$'),
    bin_high    text        NOT NULL CHECK (bin_high ~ '^[0-9]{1,19}$'),
    link        text        NOT NULL REFERENCES switch_links (name) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (length(bin_low) = length(bin_high) AND bin_low <= bin_high)
);

-- A terminal's current session: working keys under the LMK from its last sign-on.
CREATE TABLE switch_sessions (
    terminal_id   text        NOT NULL,
    merchant_id   text        NOT NULL,
    scheme        text        NOT NULL CHECK (scheme IN ('3des', 'sm4')),
    pik           text        NOT NULL,
    mak           text        NOT NULL,
    tdk           text        NOT NULL,
    signed_on     boolean     NOT NULL DEFAULT true,
    signed_on_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (terminal_id, merchant_id)
);

-- Terminal batches: one open batch per terminal; 0500 closes it and the next number opens.
CREATE TABLE switch_batches (
    terminal_id   text        NOT NULL,
    merchant_id   text        NOT NULL,
    batch_no      integer     NOT NULL CHECK (batch_no BETWEEN 1 AND 999999),
    opened_at     timestamptz NOT NULL DEFAULT now(),
    closed_at     timestamptz,
    result        smallint,                  -- 1 balanced, 2 not balanced (then 0320 upload)
    totals        text,                      -- DE48 of the terminal's 0500
    PRIMARY KEY (terminal_id, merchant_id, batch_no)
);
CREATE UNIQUE INDEX switch_batches_one_open ON switch_batches (terminal_id, merchant_id) WHERE closed_at IS NULL;

-- Every request and its response. dedup_key identifies a retransmission (POS: terminal, merchant,
-- batch, STAN, MTI; H2H: acquirer, DE7, DE11, DE41, MTI). response holds the answer's fields without
-- PAN, PIN, tracks or MAC, so a duplicate gets the first answer again.
CREATE TABLE switch_journal (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at    timestamptz NOT NULL DEFAULT now(),
    dedup_key     text        NOT NULL,
    channel       text        NOT NULL,      -- pos-3des, pos-sm4, h2h:<link>
    mti           text        NOT NULL,
    txn_type      text        NOT NULL,
    proc_code     text,
    terminal_id   text,
    merchant_id   text,
    batch_no      integer,
    stan          text,
    amount        bigint,
    currency      text,
    pan_masked    text,
    rrn           text,
    auth_id       text,
    response_code text        NOT NULL,
    link          text,                      -- upstream link used, if any
    link_mti      text,
    link_stan     text,
    link_de7      text,
    link_de32     text,
    original      text,                      -- reversals/voids: dedup key of the original, if found
    us_total      integer     NOT NULL DEFAULT 0,   -- per-hop timings in microseconds
    us_hsm        integer     NOT NULL DEFAULT 0,
    us_host       integer     NOT NULL DEFAULT 0,
    response      jsonb       NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX switch_journal_dedup ON switch_journal (dedup_key);
CREATE INDEX switch_journal_batch ON switch_journal (terminal_id, merchant_id, batch_no);
CREATE INDEX switch_journal_rrn ON switch_journal (rrn);

-- Store-and-forward reversal advices: sent as 0420, repeated as 0421 until a 0430 arrives.
-- message holds the H2H fields without PAN, PIN or tracks.
CREATE TABLE switch_saf (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now(),
    link            text        NOT NULL,
    message         jsonb       NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    done_at         timestamptz,
    response_code   text,
    reason          text        NOT NULL DEFAULT ''
);
CREATE INDEX switch_saf_pending ON switch_saf (next_attempt_at) WHERE done_at IS NULL;
