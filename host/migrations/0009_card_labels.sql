-- Card labels and the catalogue version (issue 15: every card command accepts what `pos` accepts).
--
-- cards.label: an operator's name for a card (`payswitch card label CARD NAME`; the demo's alice, bob,
-- carol), unique, 1-32 of [A-Za-z0-9_.-] and not all digits (an all-digit reference is a card id or a
-- PAN). NULL = no label. It names the card, it is no secret and it is never derived from the PAN.
ALTER TABLE cards ADD COLUMN label text UNIQUE
    CHECK (label ~ '^[A-Za-z0-9_.-]{1,32}$' AND label !~ '^[0-9]+$');

-- `card list --last4 1234` and `--pan 621234*********1234`: the masked PAN is the search key (never the
-- clear PAN; a clear PAN typed in is looked up by its hash). Neither column changes after issue, so
-- the ledger's HOT updates of a card row (PIN tries, uses left) are not affected.
CREATE INDEX cards_last4 ON cards (right(pan_masked, 4));
CREATE INDEX cards_issue_batch ON cards (issue_batch) WHERE issue_batch <> '';

-- host_catalog.version moves with every change of merchants, terminals and products (statement
-- triggers, whoever makes the change: the CLI or plain SQL). A running host polls it and drops its
-- merchant cache when it moved, so `merchant suspend` is in force from the next request, not after
-- the cache's 30 s; a running switch polls it too and reads the terminals it knows again (`terminal
-- disable`). One row, read by primary key.
CREATE TABLE host_catalog (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    version  bigint  NOT NULL DEFAULT 1
);
INSERT INTO host_catalog (id, version) VALUES (true, 1);

CREATE FUNCTION host_catalog_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE host_catalog SET version = version + 1 WHERE id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER merchants_catalog_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON merchants
    FOR EACH STATEMENT EXECUTE FUNCTION host_catalog_bump();
CREATE TRIGGER terminals_catalog_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON terminals
    FOR EACH STATEMENT EXECUTE FUNCTION host_catalog_bump();
CREATE TRIGGER products_catalog_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON products
    FOR EACH STATEMENT EXECUTE FUNCTION host_catalog_bump();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payswitch_app') THEN
        BEGIN
            GRANT SELECT, UPDATE ON host_catalog TO payswitch_app;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot grant to payswitch_app; the host will run as the connecting user';
        END;
    END IF;
END $$;
