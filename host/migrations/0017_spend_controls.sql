-- Spend controls an operator can set (issue 16 item 8; host/controls.py).
--
-- * products.controls, cards.controls: the controls document (NULL = none, the common case: the
--   posting batch then does no extra work). Written only by host.controls, which validates it:
--   {"limits": {"week_amount": minor, "week_count": n, "month_*", "lifetime_*"; a card's may also hold
--   "per_txn", "day_amount", "day_count"}, "hours": ["06:30-09:00", "mon-fri@11:00-13:30", ...],
--   "groups": [["snacks", "day", amount minor | null, count | null], ...]}. A card's document only
--   lowers its product's limits (host.controls refuses a higher one); both apply in the batch.
-- * accounts.week/month/life_*: the card's spend this ISO week (Monday start) and calendar month of
--   the business date, and over its life, kept beside the day's counters (0003) and written by the
--   same UPDATE. Counted on every approved purchase or pre-auth whether or not a window is set, so a
--   window set mid-week sees the week's spend. Rows that already count a business date start the week,
--   month and lifetime from that day's spend (the history before it is not counted).
-- * card_group_usage: the card's spend at one merchant group in one window, only for the groups its
--   controls cap. Rows are read and written in the posting batch under the card account's row lock
--   (FOR NO KEY UPDATE OF accounts), so they need no lock of their own.
ALTER TABLE products ADD COLUMN controls jsonb CHECK (controls IS NULL OR jsonb_typeof(controls) = 'object');
ALTER TABLE cards ADD COLUMN controls jsonb CHECK (controls IS NULL OR jsonb_typeof(controls) = 'object');

ALTER TABLE accounts
    ADD COLUMN week         date,
    ADD COLUMN week_amount  bigint  NOT NULL DEFAULT 0 CHECK (week_amount >= 0),
    ADD COLUMN week_count   integer NOT NULL DEFAULT 0 CHECK (week_count >= 0),
    ADD COLUMN month        date,
    ADD COLUMN month_amount bigint  NOT NULL DEFAULT 0 CHECK (month_amount >= 0),
    ADD COLUMN month_count  integer NOT NULL DEFAULT 0 CHECK (month_count >= 0),
    ADD COLUMN life_amount  bigint  NOT NULL DEFAULT 0 CHECK (life_amount >= 0),
    ADD COLUMN life_count   bigint  NOT NULL DEFAULT 0 CHECK (life_count >= 0);
UPDATE accounts
SET week = day - (extract(isodow FROM day)::int - 1), week_amount = day_amount, week_count = day_count,
    month = date_trunc('month', day)::date, month_amount = day_amount, month_count = day_count,
    life_amount = day_amount, life_count = day_count
WHERE kind = 'card' AND day IS NOT NULL;
COMMENT ON COLUMN accounts.week IS 'Monday of the ISO week (of the business date) week_amount, week_count count';
COMMENT ON COLUMN accounts.month IS 'first day of the month (of the business date) month_amount, month_count count';

CREATE TABLE card_group_usage (
    account_id bigint  NOT NULL REFERENCES accounts (id),
    group_code text    NOT NULL,
    span       text    NOT NULL CHECK (span IN ('day', 'week', 'month', 'lifetime')),
    period     date    NOT NULL,                 -- first business date of the window the sums are for
    amount     bigint  NOT NULL DEFAULT 0 CHECK (amount >= 0),
    count      integer NOT NULL DEFAULT 0 CHECK (count >= 0),
    PRIMARY KEY (account_id, group_code, span)
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payswitch_app') THEN
        BEGIN
            GRANT SELECT, INSERT, UPDATE ON card_group_usage TO payswitch_app;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot grant to payswitch_app; the host will run as the connecting user';
        END;
    END IF;
END $$;
