-- Payment codes (issue 16 item 7, host.payment_codes): one-time numeric codes a cardholder's app shows
-- as a QR code and a merchant scans and submits as the card number with POS entry mode 03x.
--
-- * code_hash: the HSM's keyed hash of the code's digits (the PAN lookup hash, host.keys pan_hash);
--   the clear code is printed once by `card code` and stored nowhere. code_masked: first 6 + last 4,
--   as PANs are masked.
-- * expires_at: created_at + host.payment_code_seconds; max_amount: the optional cap (minor units).
-- * used_key / used_at: the request (auth_requests.key) whose approval consumed it, written by the
--   posting batch that approved it, in its transaction (the row is locked FOR UPDATE by that batch's
--   read), so a code pays once. A declined attempt does not consume it.
-- * actor: who made it (`cli:<unix user>` from the CLI; the app's identity from the API later).
-- A code is never deleted: the used ones back `ledger check`'s payment_code_paid_once.

CREATE TABLE payment_codes (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code_hash   text        NOT NULL UNIQUE,
    code_masked text        NOT NULL,
    card_id     bigint      NOT NULL REFERENCES cards (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    max_amount  bigint      CHECK (max_amount > 0),
    used_key    text        UNIQUE,
    used_at     timestamptz,
    actor       text        NOT NULL CHECK (actor <> ''),
    CHECK (expires_at > created_at),
    CHECK ((used_key IS NULL) = (used_at IS NULL))
);
CREATE INDEX payment_codes_card ON payment_codes (card_id, id);

-- Used once, and nothing else ever changes: a used code cannot be made unused (or its card, expiry or cap
-- moved), and no code is deleted.
CREATE FUNCTION payment_codes_use_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.used_key IS NOT NULL OR NEW.used_key IS NULL OR NEW.code_hash <> OLD.code_hash
       OR NEW.card_id <> OLD.card_id OR NEW.created_at <> OLD.created_at OR NEW.expires_at <> OLD.expires_at
       OR NEW.max_amount IS DISTINCT FROM OLD.max_amount OR NEW.actor <> OLD.actor THEN
        RAISE EXCEPTION 'payment code % is used once and never changed otherwise', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER payment_codes_use_once BEFORE UPDATE ON payment_codes
    FOR EACH ROW EXECUTE FUNCTION payment_codes_use_once();
CREATE TRIGGER payment_codes_no_delete BEFORE DELETE ON payment_codes
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payswitch_app') THEN
        BEGIN
            GRANT SELECT, INSERT, UPDATE ON payment_codes TO payswitch_app;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot grant to payswitch_app; the host will run as the connecting user';
        END;
    END IF;
END $$;
