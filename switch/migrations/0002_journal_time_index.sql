-- Settlement's reconciliation reads the journal by business-date window (created_at). The journal is
-- append-only and written in time order, so a BRIN index finds a day's rows for almost no write cost
-- on the hot path (a B-tree would add a page write per journal row).
CREATE INDEX switch_journal_created_brin ON switch_journal USING brin (created_at);
