-- Where a `card unload` is paid (issue 16 item 5; host/bank_accounts.py).
--
-- * unload_destinations: one row per unload (key = the unload's transfer key, 'unload:<reference>'),
--   written by `card unload` before it posts: either the cardholder's registered bank account as it
--   was at that moment (cardholder, bank name, the account number as stored in cardholders: HSM
--   ciphertext under pii_data, never clear, its masked form, the account holder's name), or the
--   programme's desk (no cardholder, no bank account registered, or `--to desk`). Settlement pays
--   the unload to it (settlement/cashouts.py), so changing or clearing the bank account later does
--   not redirect a payout already owed. Once the unload's transfer exists the row is fixed: the
--   trigger refuses changing or deleting it. Before that (the posting failed or never ran) the next
--   attempt under the same reference writes it again.
-- * bank_account_events (append-only): every set and clear of a cardholder's bank account, with who,
--   when and why, and the masked account (an account changed just before an unload is the classic
--   account-takeover pattern: the trail shows it).

CREATE TABLE unload_destinations (
    unload_key     text        PRIMARY KEY CHECK (unload_key LIKE 'unload:%'),
    card_id        bigint      NOT NULL REFERENCES cards (id),
    payee          text        NOT NULL CHECK (payee IN ('bank_account', 'desk')),
    cardholder_id  bigint      REFERENCES cardholders (id),
    bank_name      text,
    account_enc    text,
    account_masked text,
    account_holder text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((payee = 'bank_account') = (account_enc IS NOT NULL)),
    CHECK (payee = 'desk' OR (cardholder_id IS NOT NULL AND bank_name IS NOT NULL
                              AND account_masked IS NOT NULL AND account_holder IS NOT NULL)),
    CHECK (payee = 'bank_account' OR (bank_name IS NULL AND account_masked IS NULL AND account_holder IS NULL))
);
CREATE INDEX unload_destinations_card ON unload_destinations (card_id);

CREATE FUNCTION unload_destination_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM transfers WHERE key = OLD.unload_key) THEN
        RAISE EXCEPTION 'the destination of % is fixed once the unload is posted: % refused',
            OLD.unload_key, TG_OP USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER unload_destinations_fixed BEFORE UPDATE OR DELETE ON unload_destinations
    FOR EACH ROW EXECUTE FUNCTION unload_destination_fixed();

CREATE TABLE bank_account_events (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cardholder_id  bigint      NOT NULL REFERENCES cardholders (id),
    action         text        NOT NULL CHECK (action IN ('set', 'clear')),
    bank_name      text        NOT NULL,
    account_masked text        NOT NULL,
    account_holder text        NOT NULL,
    actor          text        NOT NULL CHECK (actor <> ''),
    reason         text        NOT NULL DEFAULT '',
    at             timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX bank_account_events_cardholder ON bank_account_events (cardholder_id, id);
CREATE TRIGGER bank_account_events_append_only BEFORE UPDATE OR DELETE ON bank_account_events
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payswitch_app') THEN
        BEGIN
            GRANT SELECT, INSERT, UPDATE ON unload_destinations TO payswitch_app;
            GRANT SELECT, INSERT ON bank_account_events TO payswitch_app;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot grant to payswitch_app; the host will run as the connecting user';
        END;
    END IF;
END $$;
