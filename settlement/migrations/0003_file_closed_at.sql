-- The clearing file header's creation time: the instant its business date's window ended (the
-- cut-over, or `payswitch clearing close-day` before it). A date closed early is due for payout on the
-- daily cycle the day it was closed (settlement.cycles). NULL for files imported before this column.
ALTER TABLE settlement_files ADD COLUMN closed_at timestamptz;
