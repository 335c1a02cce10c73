-- Card producers (the bureaus that emboss cards and print PIN mailers) and the card-expiry sweep.
--
-- card_producers: a producer's ZMK, formed in the HSM from clear components entered by custodians
-- (A4 / WK) and kept only under the LMK; the issuer's mailer key is exported under it (A8 / ST) for
-- the producer to import into its own HSM. No clear key is stored.
CREATE TABLE card_producers (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_.-]{1,32}$'),
    scheme      text        NOT NULL CHECK (scheme IN ('3des', 'sm4')),
    zmk_lmk     text        NOT NULL,           -- the producer's ZMK under the LMK (U+32H / S+32H)
    zmk_check   text        NOT NULL,           -- its check value (16H)
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The expiry sweep (host.expiry) looks for live cards past their YYMM; without this every batch of it
-- would read the whole cards table. Partial: only the states a card can expire from (host.rules
-- TRANSITIONS), so it stays small and the ledger's counter updates never touch its columns.
CREATE INDEX cards_live_expiry ON cards (expiry) WHERE state IN ('active', 'frozen');

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payswitch_app') THEN
        BEGIN
            GRANT SELECT, INSERT, UPDATE, DELETE ON card_producers TO payswitch_app;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot grant to payswitch_app; the host will run as the connecting user';
        END;
    END IF;
END $$;
