-- The ledger's write path, measured: every posting paid for two foreign-key checks (a trigger and an
-- index probe each), an index entry for a NULL pending_key and a second card index on auth_requests.
--
-- * transfers -> accounts foreign keys go: the engine only posts to accounts it has just read in the
--   same transaction (the card row it locked, the merchant or funding sub-account it looked up), and
--   `payswitch ledger check` (transfers_balance) names any transfer whose accounts do not exist.
--   Accounts are never deleted: a trigger refuses it.
-- * the one-resolution-per-hold rule becomes a partial unique index (only completions and releases).
-- * auth_requests (card_id, rrn) serves the card history too; (card_id, received_at) goes.
-- * cards and accounts are updated in place on every posting: leave room for HOT updates.
ALTER TABLE transfers DROP CONSTRAINT transfers_debit_account_id_fkey;
ALTER TABLE transfers DROP CONSTRAINT transfers_credit_account_id_fkey;
ALTER TABLE transfers DROP CONSTRAINT transfers_pending_key_key;
CREATE UNIQUE INDEX transfers_pending_key ON transfers (pending_key) WHERE pending_key IS NOT NULL;
DROP INDEX auth_requests_card_time;
ALTER TABLE cards SET (fillfactor = 80);
ALTER TABLE accounts SET (fillfactor = 80);

CREATE FUNCTION accounts_not_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'accounts are never deleted (account %)', OLD.id USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER accounts_not_deleted BEFORE DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION accounts_not_deleted();
CREATE TRIGGER accounts_no_truncate BEFORE TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
