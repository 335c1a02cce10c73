-- Cardholders, KYC tiers and the card lifecycle (issue 16): the shared schema.
--
-- * cardholders: who owns a card. The ID number, phone, e-mail and bank account number are never in
--   clear: each is HSM M0 under the pii_data key (`iv hex:ciphertext hex`, host.pii), with an HSM keyed
--   hash (X9.19 MAC under pii_index, with a domain prefix per kind) for lookup and de-duplication, and a
--   masked form for people (phone 138****5678, e-mail a***@example.com, ID and bank account: last 4).
--   kyc_level is the tier (anonymous / named / verified); aml_status is what screening said
--   (clear / review / confirmed, host.aml). A cardholder is closed, never deleted.
-- * kyc_events (append-only): every KYC decision, with who (the operator, `cli:<unix user>` from the
--   CLI), when and why.
-- * card_events (append-only): every card state change (inventory audit), with who and why.
-- * cards: cardholder_id (NULL = anonymous, e.g. a gift card), form (physical / virtual),
--   replaced_by (the card that replaced it: host.replace), pin_lmk (the PIN under the LMK, `L`+32H, as
--   the HSM's JA / BA return it: never clear; a renewal onto a new PAN keeps the PIN by DG of it for
--   the new account, since a PVV cannot be carried to another PAN; NULL on cards issued before).
-- * products: form of its cards; issue_tier (the KYC tier a cardholder needs for a card to be issued to
--   them); the maximum balance per tier, PBOC defaults (unnamed 1,000 yuan, named 5,000 yuan), each
--   capped by the product's own max_balance. Products that exist before this migration keep their
--   max_balance for every tier (nothing already loaded becomes over its limit).

CREATE TABLE cardholders (
    id                   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                 text        NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    name_key             text        NOT NULL,              -- lower case, spaces collapsed: search
    id_type              text        CHECK (id_type IN ('resident_id', 'passport', 'hk_macau_permit',
                                                        'taiwan_permit', 'foreign_permanent', 'other')),
    id_number_enc        text,
    id_number_hash       text,
    id_number_masked     text,
    phone_enc            text,
    phone_hash           text,
    phone_masked         text,
    email_enc            text,
    email_hash           text,
    email_masked         text,
    birth_date           date,
    address              text        NOT NULL DEFAULT '',
    kyc_level            text        NOT NULL DEFAULT 'anonymous'
                         CHECK (kyc_level IN ('anonymous', 'named', 'verified')),
    aml_status           text        NOT NULL DEFAULT 'clear' CHECK (aml_status IN ('clear', 'review', 'confirmed')),
    state                text        NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'closed')),
    bank_name            text,
    bank_account_enc     text,
    bank_account_hash    text,
    bank_account_masked  text,
    bank_account_holder  text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CHECK ((id_number_enc IS NULL) = (id_number_hash IS NULL) AND (id_number_hash IS NULL) = (id_type IS NULL)),
    CHECK ((phone_enc IS NULL) = (phone_hash IS NULL)),
    CHECK ((email_enc IS NULL) = (email_hash IS NULL)),
    CHECK ((bank_account_enc IS NULL) = (bank_account_hash IS NULL)),
    CHECK (kyc_level = 'anonymous' OR id_number_hash IS NOT NULL)   -- named and verified need an ID
);
-- One live cardholder per identity document (de-duplication); a closed one frees it.
CREATE UNIQUE INDEX cardholders_id_number ON cardholders (id_number_hash)
    WHERE id_number_hash IS NOT NULL AND state = 'active';
CREATE INDEX cardholders_phone ON cardholders (phone_hash) WHERE phone_hash IS NOT NULL;
CREATE INDEX cardholders_email ON cardholders (email_hash) WHERE email_hash IS NOT NULL;
CREATE INDEX cardholders_name_key ON cardholders (name_key text_pattern_ops);
CREATE INDEX cardholders_review ON cardholders (id) WHERE aml_status = 'review';

CREATE TABLE kyc_events (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cardholder_id bigint      NOT NULL REFERENCES cardholders (id),
    from_level    text        NOT NULL,
    to_level      text        NOT NULL CHECK (to_level IN ('anonymous', 'named', 'verified')),
    decision      text        NOT NULL CHECK (decision <> ''),   -- e.g. registered, submitted, approved, rejected, downgraded
    actor         text        NOT NULL CHECK (actor <> ''),
    reason        text        NOT NULL DEFAULT '',
    at            timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX kyc_events_cardholder ON kyc_events (cardholder_id, id);
CREATE TRIGGER kyc_events_append_only BEFORE UPDATE OR DELETE ON kyc_events
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

CREATE TABLE card_events (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    card_id     bigint      NOT NULL REFERENCES cards (id),
    from_state  text,                                   -- NULL: the card was issued
    to_state    text        NOT NULL,
    action      text        NOT NULL CHECK (action <> ''),   -- issue, activate, freeze, lost, replace, ...
    actor       text        NOT NULL CHECK (actor <> ''),
    reason      text        NOT NULL DEFAULT '',
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX card_events_card ON card_events (card_id, id);
CREATE TRIGGER card_events_append_only BEFORE UPDATE OR DELETE ON card_events
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

ALTER TABLE cards
    ADD COLUMN cardholder_id bigint REFERENCES cardholders (id),
    ADD COLUMN form          text   NOT NULL DEFAULT 'physical' CHECK (form IN ('physical', 'virtual')),
    ADD COLUMN replaced_by   bigint REFERENCES cards (id),
    ADD COLUMN pin_lmk       text   CHECK (pin_lmk ~ '^L[0-9A-F]{32}$');
CREATE INDEX cards_cardholder ON cards (cardholder_id) WHERE cardholder_id IS NOT NULL;

ALTER TABLE products
    ADD COLUMN form                  text   NOT NULL DEFAULT 'physical' CHECK (form IN ('physical', 'virtual')),
    ADD COLUMN issue_tier            text   NOT NULL DEFAULT 'anonymous'
                                     CHECK (issue_tier IN ('anonymous', 'named', 'verified')),
    ADD COLUMN max_balance_anonymous bigint NOT NULL DEFAULT 100000 CHECK (max_balance_anonymous > 0),
    ADD COLUMN max_balance_named     bigint NOT NULL DEFAULT 500000 CHECK (max_balance_named > 0),
    ADD COLUMN max_balance_verified  bigint NOT NULL DEFAULT 500000 CHECK (max_balance_verified > 0);
UPDATE products SET max_balance_anonymous = max_balance, max_balance_named = max_balance,
                    max_balance_verified = max_balance;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payswitch_app') THEN
        BEGIN
            GRANT SELECT, INSERT, UPDATE ON cardholders TO payswitch_app;
            GRANT SELECT, INSERT ON kyc_events, card_events TO payswitch_app;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot grant to payswitch_app; the host will run as the connecting user';
        END;
    END IF;
END $$;
