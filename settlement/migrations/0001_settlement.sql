-- Settlement: its rate cards and cycles, the clearing files it settled, their details with fees,
-- per merchant/store/business-date accruals, runs, payouts and its double-entry postings.

CREATE TABLE settlement_merchants (
    merchant_id    text PRIMARY KEY,
    name           text NOT NULL DEFAULT '',
    cycle          text NOT NULL DEFAULT 'daily',
    cycle_day      smallint,
    payout_account text NOT NULL DEFAULT '',
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT settlement_merchants_cycle CHECK (
        (cycle = 'daily' AND cycle_day IS NULL)
        OR (cycle = 'weekly' AND cycle_day BETWEEN 1 AND 7)
        OR (cycle = 'monthly' AND cycle_day BETWEEN 1 AND 31))
);

-- merchant_id '*' is the default rate card for merchants without their own.
CREATE TABLE settlement_fee_schedules (
    id                bigserial PRIMARY KEY,
    merchant_id       text    NOT NULL,
    version           text    NOT NULL,
    effective_from    date    NOT NULL,
    rate_bp           integer NOT NULL CHECK (rate_bp BETWEEN 0 AND 10000),
    fixed_fee         bigint  NOT NULL DEFAULT 0 CHECK (fixed_fee >= 0),
    min_fee           bigint  NOT NULL DEFAULT 0 CHECK (min_fee >= 0),
    max_fee           bigint  CHECK (max_fee IS NULL OR max_fee >= min_fee),
    refund_rule       text    NOT NULL DEFAULT 'none' CHECK (refund_rule IN ('none', 'percent', 'full')),
    issuer_share_bp   integer NOT NULL CHECK (issuer_share_bp >= 0),
    acquirer_share_bp integer NOT NULL CHECK (acquirer_share_bp >= 0),
    platform_share_bp integer NOT NULL CHECK (platform_share_bp >= 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (issuer_share_bp + acquirer_share_bp + platform_share_bp = 10000),
    UNIQUE (merchant_id, effective_from),
    UNIQUE (merchant_id, version)
);

CREATE TABLE settlement_files (
    id           bigserial PRIMARY KEY,
    name         text     NOT NULL UNIQUE,
    sha256       text     NOT NULL UNIQUE,  -- of the whole file's bytes
    issuer_id    text     NOT NULL,
    business_date date    NOT NULL,
    sequence     smallint NOT NULL,
    currency     text     NOT NULL,
    detail_count bigint   NOT NULL,
    total_debit  bigint   NOT NULL,
    total_credit bigint   NOT NULL,
    total_fee    bigint   NOT NULL,
    imported_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per clearing detail. The primary key makes a posting settle at most once even if it came
-- again in another file. merchant_amount is what the merchant is owed (+) or owes (-); fee is the
-- merchant service fee (+ charged, - returned), split exactly into the three shares.
CREATE TABLE settlement_items (
    issuer_id           text   NOT NULL,
    posting_id          bigint NOT NULL,
    file_id             bigint NOT NULL REFERENCES settlement_files (id),
    business_date       date   NOT NULL,
    txn_type            text   NOT NULL,
    original_posting_id bigint,
    acquirer_id         text   NOT NULL,
    merchant_id         text   NOT NULL,
    store_id            text   NOT NULL,
    terminal_id         text   NOT NULL,
    amount              bigint NOT NULL CHECK (amount >= 0),
    sign                text   NOT NULL CHECK (sign IN ('D', 'C')),
    merchant_amount     bigint NOT NULL,
    file_fee            bigint NOT NULL,
    fee                 bigint NOT NULL,
    fee_version         text   NOT NULL,
    issuer_share        bigint NOT NULL,
    acquirer_share      bigint NOT NULL,
    platform_share      bigint NOT NULL,
    rrn                 text   NOT NULL,
    stan                text   NOT NULL,
    auth_id             text   NOT NULL,
    CHECK (issuer_share + acquirer_share + platform_share = fee),
    PRIMARY KEY (issuer_id, posting_id)
);
CREATE INDEX settlement_items_file ON settlement_items (file_id);

CREATE TABLE settlement_runs (
    id            bigserial PRIMARY KEY,
    as_of         date   NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    payout_count  integer NOT NULL DEFAULT 0,
    payout_total  bigint  NOT NULL DEFAULT 0,
    carried_count integer NOT NULL DEFAULT 0
);

CREATE TABLE settlement_payouts (
    id             bigserial PRIMARY KEY,
    run_id         bigint NOT NULL REFERENCES settlement_runs (id),
    merchant_id    text   NOT NULL,
    payout_account text   NOT NULL,
    reference      text   NOT NULL UNIQUE,
    gross          bigint NOT NULL,
    fee            bigint NOT NULL,
    net            bigint NOT NULL CHECK (net > 0),
    first_business_date date NOT NULL,
    last_business_date  date NOT NULL,
    CHECK (net = gross - fee),
    UNIQUE (run_id, merchant_id)
);

-- Business totals per file, merchant, store, acquirer and business date; run_id is set when paid out.
CREATE TABLE settlement_accruals (
    id             bigserial PRIMARY KEY,
    file_id        bigint NOT NULL REFERENCES settlement_files (id),
    merchant_id    text   NOT NULL,
    store_id       text   NOT NULL,
    acquirer_id    text   NOT NULL,
    business_date  date   NOT NULL,
    txn_count      bigint NOT NULL,
    sales          bigint NOT NULL,  -- debits to cardholders: money the merchant is owed
    returns        bigint NOT NULL,  -- credits to cardholders: money the merchant gives back
    fee            bigint NOT NULL,
    issuer_share   bigint NOT NULL,
    acquirer_share bigint NOT NULL,
    platform_share bigint NOT NULL,
    run_id         bigint REFERENCES settlement_runs (id),
    payout_id      bigint REFERENCES settlement_payouts (id),
    UNIQUE (file_id, merchant_id, store_id, acquirer_id, business_date)
);
CREATE INDEX settlement_accruals_open ON settlement_accruals (merchant_id) WHERE run_id IS NULL;

-- Settlement's own double-entry book (merchant payable -> settled, fee income by party) until the
-- host ledger takes these postings. Every payout's entries balance.
CREATE TABLE settlement_postings (
    id        bigserial PRIMARY KEY,
    run_id    bigint NOT NULL REFERENCES settlement_runs (id),
    payout_id bigint NOT NULL REFERENCES settlement_payouts (id),
    account   text   NOT NULL,
    debit     bigint NOT NULL DEFAULT 0 CHECK (debit >= 0),
    credit    bigint NOT NULL DEFAULT 0 CHECK (credit >= 0),
    CHECK ((debit = 0) <> (credit = 0))
);
CREATE INDEX settlement_postings_payout ON settlement_postings (payout_id);
