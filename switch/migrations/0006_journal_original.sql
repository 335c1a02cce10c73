-- A reversal that arrives before its original (issue 14): the late original must be declined 05 and
-- not sent upstream, also after a restart, so the switch finds a reversal by the key of the original
-- it names (switch_journal.original: an acquirer's DE90 key, a POS "MTI/STAN"). Partial: only
-- reversals and voids carry one, so the index costs nothing on the rows of ordinary purchases.
CREATE INDEX switch_journal_original ON switch_journal (original) WHERE original IS NOT NULL;
