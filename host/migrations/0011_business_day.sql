-- The daily amount and count limits roll over at the programme's business-day boundary
-- (clearing.timezone, clearing.cutover: the business date the clearing file uses), no longer at UTC
-- midnight. accounts.day now holds that business date. A row written under the UTC rule needs no
-- rewrite: a date other than today's business date is reset at the card's next purchase, and one equal
-- to it keeps counting (the day the release is deployed: the two rules differ by hours at most).
COMMENT ON COLUMN accounts.day IS
    'business date (clearing.timezone, clearing.cutover) of the velocity counters day_amount, day_count';
