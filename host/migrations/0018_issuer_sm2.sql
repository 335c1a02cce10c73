-- PIN set by an app under the issuer's SM2 key, and PIN reset (issue 16 item 6 b; host.pins).
--
-- * issuer_sm2_keys: the issuer's SM2 key pair for PIN encryption, made by the HSM's SK on first use.
--   The private key is only ever under the LMK (`P`+96H, specs/hsm-conventions.md); the public key
--   (04 || x || y) is what apps encrypt PIN blocks under; check_value = SM3 of it, leftmost 8 bytes.
--   One row per use (`pin`); host_keys holds only 3DES/SM4 keys and their check values.
-- * cards.pin_stamp: the freshness stamp (app's UTC seconds) of the last PIN set accepted for the
--   card; a PIN set must carry a later one, so a ciphertext cannot be replayed. NULL: none yet.
-- * A change of cards.pvv / pvki bumps host_catalog.version (statement trigger; the ledger's own
--   updates of pin_tries and uses_left do not name pvv, so they do not): a running host polls that
--   version and forgets the PIN data it cached, so a new PIN is in force from the next poll (1 s).

CREATE TABLE issuer_sm2_keys (
    name         text        PRIMARY KEY CHECK (name IN ('pin')),
    private_lmk  text        NOT NULL CHECK (private_lmk ~ '^P[0-9A-F]{96}$'),
    public_key   text        NOT NULL CHECK (public_key ~ '^04[0-9A-F]{128}$'),
    check_value  text        NOT NULL CHECK (check_value ~ '^[0-9A-F]{16}$'),
    created_at   timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE cards ADD COLUMN pin_stamp bigint;

CREATE TRIGGER cards_pin_catalog_bump AFTER UPDATE OF pvv, pvki ON cards
    FOR EACH STATEMENT EXECUTE FUNCTION host_catalog_bump();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payswitch_app') THEN
        BEGIN
            GRANT SELECT, INSERT ON issuer_sm2_keys TO payswitch_app;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot grant to payswitch_app; the host will run as the connecting user';
        END;
    END IF;
END $$;
