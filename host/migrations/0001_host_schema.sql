-- The authorization host: the issuer's system of record (see host/README.md, "Schema").
--
-- Reference data: mcc, merchant_groups, acquirers, links, products, bin_ranges, merchants, stores,
-- terminals, host_keys.  Cards and accounts.  The ledger: transfers (append-only, TigerBeetle-style:
-- every row is one debit leg and one credit leg of the same amount) and auth_requests (append-only
-- journal of every request and the response it got, so a duplicate gets the first answer back).
-- Other components READ these tables (the switch: terminals, merchants; settlement: the
-- clearing_postings view); only the host writes them.
--
-- Money is bigint minor units. No clear PAN anywhere: cards hold the PAN encrypted by the HSM (M0,
-- data key), an HSM keyed hash for lookup, and the masked PAN (first 6 + last 4).

-- Number of ledger partitions. A card belongs to partition pan_hash % partitions forever; each
-- partition has its own merchant payable and funding sub-accounts, so no row is touched by every
-- purchase, and one writer at a time posts a partition.
CREATE TABLE ledger_settings (
    singleton   boolean  PRIMARY KEY DEFAULT true CHECK (singleton),
    partitions  smallint NOT NULL CHECK (partitions BETWEEN 1 AND 256)
);
INSERT INTO ledger_settings (partitions) VALUES (16);

CREATE TABLE mcc (
    code        char(4) PRIMARY KEY CHECK (code ~ '^[0-9]{4}$'),
    description text    NOT NULL DEFAULT ''
);

CREATE TABLE merchant_groups (
    code        text PRIMARY KEY CHECK (code ~ '^[A-Za-z0-9_-]{1,32}$'),
    name        text NOT NULL DEFAULT ''
);

-- Institutions that send us requests (DE32).
CREATE TABLE acquirers (
    institution_id text        PRIMARY KEY CHECK (institution_id ~ '^[0-9]{1,11}$'),
    name           text        NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- H2H links into the host, one per peer institution (the DE32 it sends). Keys under the LMK.
CREATE TABLE links (
    institution_id text        PRIMARY KEY CHECK (institution_id ~ '^[0-9]{1,11}$'),
    profile        text        NOT NULL CHECK (profile IN ('3des', 'sm4')),
    zmk            text,                    -- link ZMK under LMK (U.../S...), for 0800 key change
    zpk            text,                    -- current link ZPK under LMK (PIN blocks in DE52)
    zpk_check      text,
    zak            text,                    -- MAC key under LMK, NULL = no MAC on this link
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE products (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code               text        NOT NULL UNIQUE CHECK (code ~ '^[A-Za-z0-9_-]{1,32}$'),
    name               text        NOT NULL DEFAULT '',
    kind               text        NOT NULL CHECK (kind IN ('reloadable', 'fixed_amount', 'usage_limited')),
    currency           char(3)     NOT NULL CHECK (currency ~ '^[0-9]{3}$'),
    max_balance        bigint      NOT NULL CHECK (max_balance > 0),
    initial_amount     bigint      NOT NULL DEFAULT 0 CHECK (initial_amount >= 0),   -- fixed_amount: face value
    uses               integer     CHECK (uses > 0),                                 -- usage_limited: N uses
    per_txn_limit      bigint      NOT NULL CHECK (per_txn_limit > 0),
    daily_amount_limit bigint      NOT NULL CHECK (daily_amount_limit > 0),
    daily_count_limit  integer     NOT NULL CHECK (daily_count_limit > 0),
    validity_months    integer     NOT NULL CHECK (validity_months BETWEEN 1 AND 240),
    pin_required       boolean     NOT NULL DEFAULT true,
    pin_scheme         text        NOT NULL DEFAULT '3des' CHECK (pin_scheme IN ('3des', 'sm4')),
    allowed_mccs       text[],                -- NULL: any MCC
    allowed_groups     text[],                -- NULL: any merchant group
    created_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'usage_limited') = (uses IS NOT NULL)),
    CHECK (kind <> 'fixed_amount' OR initial_amount > 0)
);

-- PANs of a product: BIN prefix + random serial + Luhn digit, pan_length digits in all.
CREATE TABLE bin_ranges (
    bin        text        PRIMARY KEY CHECK (bin ~ '^[0-9]{6,11}$'),
    pan_length smallint    NOT NULL CHECK (pan_length BETWEEN 13 AND 19),
    product_id bigint      NOT NULL REFERENCES products (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (pan_length > length(bin) + 1)
);

CREATE TABLE merchants (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id      text        NOT NULL UNIQUE CHECK (merchant_id ~ '^[ -~]{1,15}$'),  -- DE42
    name             text        NOT NULL DEFAULT '',
    mcc              char(4)     NOT NULL CHECK (mcc ~ '^[0-9]{4}$'),
    group_code       text        REFERENCES merchant_groups (code),
    acquirer_id      text        NOT NULL DEFAULT '',
    currency         char(3)     NOT NULL DEFAULT '156',
    fee_rate_bps     integer     NOT NULL DEFAULT 0 CHECK (fee_rate_bps BETWEEN 0 AND 10000),
    fee_rate_version integer     NOT NULL DEFAULT 1 CHECK (fee_rate_version > 0),
    state            text        NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'suspended', 'closed')),
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE stores (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id bigint      NOT NULL REFERENCES merchants (id),
    code        text        NOT NULL CHECK (code ~ '^[A-Za-z0-9_-]{1,32}$'),
    name        text        NOT NULL DEFAULT '',
    address     text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, code)
);

-- The switch reads this table at POS sign-on: tmk is the terminal master key under the LMK.
CREATE TABLE terminals (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    terminal_id  text        NOT NULL CHECK (terminal_id ~ '^[ -~]{1,8}$'),              -- DE41
    merchant_id  bigint      NOT NULL REFERENCES merchants (id),
    store_id     bigint      REFERENCES stores (id),
    scheme       text        NOT NULL CHECK (scheme IN ('3des', 'sm4')),
    tmk          text        NOT NULL,                -- U+32H (3des) or S+32H (sm4), under LMK
    tmk_check    text        NOT NULL,
    state        text        NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'disabled')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, terminal_id)
);
CREATE INDEX terminals_terminal_id ON terminals (terminal_id);

-- Issuer keys, all under the LMK: pan_data (00A, M0/M2), pan_index (003, M6 lookup hash), pvk (002).
CREATE TABLE host_keys (
    name        text        PRIMARY KEY,
    key_lmk     text        NOT NULL,
    check_value text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- TigerBeetle-style accounts: four monotonic sums. posted balance (what the card holds) =
-- credits_posted - debits_posted; available = that minus debits_pending (holds).
-- kind: card (one per card, must not overdraw), merchant (payable, one per merchant x partition),
-- funding (the issuer's float for administrative loads, one per currency x partition).
CREATE TABLE accounts (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text        NOT NULL CHECK (kind IN ('card', 'merchant', 'funding')),
    currency        char(3)     NOT NULL,
    part            smallint    NOT NULL CHECK (part >= 0),
    merchant_id     bigint      REFERENCES merchants (id),
    no_overdraft    boolean     NOT NULL,          -- debits must not exceed credits (prepaid)
    debits_pending  bigint      NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
    debits_posted   bigint      NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_pending bigint      NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
    credits_posted  bigint      NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT prepaid_balance_not_negative
        CHECK (NOT no_overdraft OR debits_posted + debits_pending <= credits_posted),
    CHECK ((kind = 'merchant') = (merchant_id IS NOT NULL))
);
CREATE UNIQUE INDEX accounts_merchant_part ON accounts (merchant_id, part) WHERE kind = 'merchant';
CREATE UNIQUE INDEX accounts_funding_part ON accounts (currency, part) WHERE kind = 'funding';

CREATE TABLE cards (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product_id   bigint      NOT NULL REFERENCES products (id),
    account_id   bigint      NOT NULL UNIQUE REFERENCES accounts (id),
    pan_hash     text        NOT NULL UNIQUE,        -- HSM MAC of the PAN under the pan_index key
    pan_enc      text        NOT NULL,               -- HSM M0 encryption under the pan_data key
    pan_masked   text        NOT NULL,               -- first 6, one * per hidden digit, last 4
    expiry       char(4)     NOT NULL CHECK (expiry ~ '^[0-9]{4}$'),   -- YYMM
    pvv          char(4)     NOT NULL,
    pvki         smallint    NOT NULL DEFAULT 1,
    state        text        NOT NULL DEFAULT 'inventory'
                 CHECK (state IN ('inventory', 'active', 'frozen', 'lost', 'stolen', 'expired', 'closed')),
    part         smallint    NOT NULL,
    uses_left    integer     CHECK (uses_left >= 0),
    pin_tries    integer     NOT NULL DEFAULT 0 CHECK (pin_tries >= 0),
    day          date,                                -- velocity counters for this UTC day
    day_amount   bigint      NOT NULL DEFAULT 0,
    day_count    integer     NOT NULL DEFAULT 0,
    issue_batch  text        NOT NULL DEFAULT '',
    issued_at    timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Every request the host decided, with the answer it got. key = acquirer (DE32 without leading
-- zeros) : DE7 : DE11 : DE41 : MTI (0221 -> 0220, 0421 -> 0420: a repeat is the same request).
-- posted: whether the request created a transfer (key = transfers.key).
CREATE TABLE auth_requests (
    key            text        PRIMARY KEY,
    mti            char(4)     NOT NULL,
    txn            text        NOT NULL,
    proc_code      char(6),
    card_id        bigint,
    merchant_ref   bigint,                  -- merchants.id
    acquirer_id    text        NOT NULL,
    terminal_id    text        NOT NULL DEFAULT '',
    merchant_id    text        NOT NULL DEFAULT '',   -- DE42 as received
    stan           char(6)     NOT NULL,
    transmitted    char(10)    NOT NULL,              -- DE7
    rrn            text        NOT NULL DEFAULT '',
    local_time     text        NOT NULL DEFAULT '',   -- DE13 MMDD + DE12 hhmmss at the terminal
    amount         bigint      NOT NULL DEFAULT 0,
    currency       char(3),
    response_code  char(2)     NOT NULL,
    auth_id        text        NOT NULL DEFAULT '',
    balance_field  text        NOT NULL DEFAULT '',   -- DE54 sent back
    original_key   text,                              -- void/refund/completion/pre-auth void: original request
    reversal_of    text,                              -- reversals: key the original has (seen or not)
    posted         boolean     NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX auth_requests_card_rrn ON auth_requests (card_id, rrn);
CREATE INDEX auth_requests_reversal_of ON auth_requests (reversal_of) WHERE reversal_of IS NOT NULL;
CREATE INDEX auth_requests_card_time ON auth_requests (card_id, received_at);

-- The ledger. One row = debit leg + credit leg of `amount`. phase:
--   single        posted at once
--   pending       a hold (pre-auth): moves the pending sums; expires_at set
--   post_pending  completion of pending_key: releases its pending amount, posts `amount`
--   void_pending  release of pending_key (pre-auth void, reversal, expiry): amount = the hold's amount
-- key = auth_requests.key of the request that made it ('expire:' || pending key for the sweeper,
-- 'admin:' || uuid for administrative loads). hold_of = the pre-auth key a pending row stands for.
CREATE TABLE transfers (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,   -- posting id, ascending
    key               text        NOT NULL UNIQUE,
    debit_account_id  bigint      NOT NULL REFERENCES accounts (id),
    credit_account_id bigint      NOT NULL REFERENCES accounts (id),
    amount            bigint      NOT NULL CHECK (amount > 0),
    currency          char(3)     NOT NULL,
    phase             text        NOT NULL CHECK (phase IN ('single', 'pending', 'post_pending', 'void_pending')),
    code              text        NOT NULL CHECK (code IN ('purchase', 'topup', 'refund', 'void', 'preauth',
                                  'completion', 'preauth_void', 'reversal', 'expiry', 'admin_load', 'admin_unload')),
    card_id           bigint      NOT NULL,
    pending_key       text        UNIQUE,             -- post/void: the hold it resolves (at most once)
    hold_of           text,
    original_key      text,                           -- the request this one refers to or undoes
    expires_at        timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (debit_account_id <> credit_account_id),
    CHECK ((phase = 'pending') = (expires_at IS NOT NULL)),
    CHECK ((phase IN ('post_pending', 'void_pending')) = (pending_key IS NOT NULL))
);
-- An original is undone at most once: one reversal, one void.
CREATE UNIQUE INDEX transfers_one_reversal ON transfers (original_key) WHERE code = 'reversal';
CREATE UNIQUE INDEX transfers_one_void ON transfers (original_key) WHERE code = 'void';
CREATE INDEX transfers_original ON transfers (original_key) WHERE original_key IS NOT NULL;
CREATE INDEX transfers_hold_of ON transfers (hold_of) WHERE hold_of IS NOT NULL;
CREATE INDEX transfers_card ON transfers (card_id, id);
CREATE INDEX transfers_pending_expiry ON transfers (expires_at) WHERE phase = 'pending';
CREATE INDEX transfers_created ON transfers (created_at);

-- Append-only: no UPDATE, DELETE or TRUNCATE for anyone, whatever their rights.
CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER transfers_append_only BEFORE UPDATE OR DELETE ON transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER transfers_no_truncate BEFORE TRUNCATE ON transfers
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER auth_requests_append_only BEFORE UPDATE OR DELETE ON auth_requests
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER auth_requests_no_truncate BEFORE TRUNCATE ON auth_requests
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

-- Holds: each pre-auth hold with its state, derived from the append-only transfers.
CREATE VIEW holds AS
SELECT p.key AS hold_key, p.hold_of AS preauth_key, p.card_id, p.debit_account_id AS card_account_id,
       p.credit_account_id AS merchant_account_id, p.amount, p.currency, p.created_at, p.expires_at,
       CASE WHEN r.key IS NULL THEN 'pending'
            WHEN r.phase = 'post_pending' THEN 'posted'
            WHEN r.code = 'expiry' THEN 'expired'
            ELSE 'voided' END AS state,
       r.key AS resolved_by, r.amount AS resolved_amount
FROM transfers p
LEFT JOIN transfers r ON r.pending_key = p.key
WHERE p.phase = 'pending';

-- Each transfer as its two entries (legs): the debit leg negative, the credit leg positive. `ledger
-- check` proves every transfer's legs sum to zero and every account's sums equal its legs.
CREATE VIEW ledger_entries AS
SELECT t.id AS transfer_id, t.key, t.debit_account_id AS account_id, -t.amount AS amount, t.phase, t.pending_key
FROM transfers t
UNION ALL
SELECT t.id, t.key, t.credit_account_id, t.amount, t.phase, t.pending_key
FROM transfers t;

-- For the clearing file (settlement reads this): one row per posting that moves money between a
-- card and a merchant or the issuer's float. sign: D money from the cardholder, C to the cardholder.
CREATE VIEW clearing_postings AS
SELECT t.id AS posting_id,
       CASE t.code
           WHEN 'purchase' THEN 'PURCHASE' WHEN 'completion' THEN 'COMPLETION' WHEN 'refund' THEN 'REFUND'
           WHEN 'void' THEN 'VOID' WHEN 'reversal' THEN 'REVERSAL' ELSE 'TOPUP' END AS txn_type,
       o.id AS original_posting_id,
       coalesce(r.acquirer_id, m.acquirer_id, '') AS acquirer_id,
       coalesce(m.merchant_id, '') AS merchant_id,
       coalesce(s.code, '') AS store_id,
       coalesce(r.terminal_id, '') AS terminal_id,
       c.pan_masked,
       pr.code AS product_code,
       t.amount,
       CASE WHEN ca.kind = 'card' AND t.debit_account_id = ca.id THEN 'D' ELSE 'C' END AS sign,
       coalesce(m.fee_rate_bps, 0) AS fee_rate_bps,
       coalesce(m.fee_rate_version, 0) AS fee_rate_version,
       coalesce(r.rrn, '') AS rrn,
       coalesce(r.stan, '') AS stan,
       coalesce(r.auth_id, '') AS auth_id,
       coalesce(r.local_time, '') AS local_time,
       t.currency,
       t.created_at AS posted_at
FROM transfers t
JOIN cards c ON c.id = t.card_id
JOIN accounts ca ON ca.id = c.account_id
JOIN products pr ON pr.id = c.product_id
LEFT JOIN auth_requests r ON r.key = t.key
LEFT JOIN transfers o ON o.key = t.original_key
LEFT JOIN accounts ma ON ma.id = CASE WHEN t.debit_account_id = ca.id THEN t.credit_account_id
                                      ELSE t.debit_account_id END AND ma.kind = 'merchant'
LEFT JOIN merchants m ON m.id = ma.merchant_id
LEFT JOIN terminals tm ON tm.terminal_id = r.terminal_id AND tm.merchant_id = m.id
LEFT JOIN stores s ON s.id = tm.store_id
WHERE t.phase IN ('single', 'post_pending') AND t.code NOT IN ('preauth', 'preauth_void', 'expiry');

-- The application role: may not UPDATE or DELETE the ledger. Created when the migrating user may
-- create roles; on a server where it may not, the triggers above still refuse UPDATE/DELETE.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payswitch_app') THEN
        BEGIN
            CREATE ROLE payswitch_app NOLOGIN;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot create role payswitch_app; the host will run as the connecting user';
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payswitch_app') THEN
        BEGIN
            EXECUTE format('GRANT payswitch_app TO %I', current_user);
            GRANT USAGE ON SCHEMA public TO payswitch_app;
            GRANT SELECT, INSERT, UPDATE, DELETE ON mcc, merchant_groups, acquirers, links, products,
                bin_ranges, merchants, stores, terminals, host_keys, accounts, cards TO payswitch_app;
            GRANT SELECT ON ledger_settings, holds, ledger_entries, clearing_postings TO payswitch_app;
            GRANT SELECT, INSERT ON transfers, auth_requests TO payswitch_app;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot grant to payswitch_app; the host will run as the connecting user';
        END;
    END IF;
END $$;
