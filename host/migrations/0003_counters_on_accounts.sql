-- A purchase used to update two rows per card (the account's sums and the card's daily counters) and
-- lock both. The day's amount and count move to the card's account row, which the posting updates
-- anyway; the card row is now written only when its PIN tries or uses left change.
ALTER TABLE accounts
    ADD COLUMN day        date,
    ADD COLUMN day_amount bigint  NOT NULL DEFAULT 0,
    ADD COLUMN day_count  integer NOT NULL DEFAULT 0;
UPDATE accounts a SET day = c.day, day_amount = c.day_amount, day_count = c.day_count
FROM cards c WHERE c.account_id = a.id AND c.day IS NOT NULL;
ALTER TABLE cards DROP COLUMN day, DROP COLUMN day_amount, DROP COLUMN day_count;
