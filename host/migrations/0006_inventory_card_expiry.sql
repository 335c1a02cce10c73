-- An inventory card past its expiry month becomes `expired` too (stock that can no longer be sold):
-- the card-expiry sweep's partial index covers the three states it moves (host/expiry.py).
DROP INDEX cards_live_expiry;
CREATE INDEX cards_expirable_expiry ON cards (expiry) WHERE state IN ('active', 'frozen', 'inventory');
