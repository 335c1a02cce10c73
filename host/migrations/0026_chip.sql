-- Chip and contactless on the issuer's side (issue 19 items 1 and 2; host/chip.py, host/README.md "Chip
-- and contactless"):
-- * products.chip: the algorithm of the chip the product's cards carry ('none': magstripe only);
--   products.imk_ac (+ its check value): the issuer master key for application cryptograms (key type
--   109, payShield's MK-AC), U+32H for a 3DES chip or S+32H for an SM4 one, under the LMK: the HSM
--   derives each card's key from it (EMV option A) and checks the ARQC, makes the ARPC;
--   products.chip_fallback: what a swipe or keyed sale (DE22 02x/01x) of a chip card gets: 'decline'
--   (57 chip_fallback) or 'flag' (approved, the request flagged chip_fallback in auth_flags);
--   products.no_cvm_limit / no_cvm_cumulative_limit (fen): contactless (07x) below the first, while the
--   card's no-CVM sum stays within the second, needs no PIN.
-- * cards.no_cvm_amount / no_cvm_count: the card's approved no-CVM sales since its last online PIN
--   verified transaction (which resets them to 0); cards.last_atc: the highest application transaction
--   counter of a verified cryptogram (NULL: none yet): one not above it is a replay, declined 05.
-- * auth_flags: an approved request's flags (chip_fallback), beside the append-only auth_requests row
--   (a row of its own: the journal's columns are the ledger chain's canonical rows, host/chain.py).
ALTER TABLE products
    ADD COLUMN chip                    text   NOT NULL DEFAULT 'none' CHECK (chip IN ('none', '3des', 'sm4')),
    ADD COLUMN imk_ac                  text   CHECK (imk_ac ~ '^[US][0-9A-F]{32}$'),
    ADD COLUMN imk_ac_check            text,
    ADD COLUMN chip_fallback           text   NOT NULL DEFAULT 'decline' CHECK (chip_fallback IN ('decline', 'flag')),
    ADD COLUMN no_cvm_limit            bigint NOT NULL DEFAULT 30000 CHECK (no_cvm_limit >= 0),
    ADD COLUMN no_cvm_cumulative_limit bigint NOT NULL DEFAULT 100000 CHECK (no_cvm_cumulative_limit >= 0),
    -- the key's scheme is the chip's algorithm: U (3DES) for 3des, S (SM4) for sm4
    ADD CONSTRAINT products_imk_ac_scheme CHECK (
        imk_ac IS NULL OR (chip = '3des' AND imk_ac LIKE 'U%') OR (chip = 'sm4' AND imk_ac LIKE 'S%'));

ALTER TABLE cards
    ADD COLUMN no_cvm_amount bigint  NOT NULL DEFAULT 0 CHECK (no_cvm_amount >= 0),
    ADD COLUMN no_cvm_count  integer NOT NULL DEFAULT 0 CHECK (no_cvm_count >= 0),
    ADD COLUMN last_atc      integer CHECK (last_atc BETWEEN 0 AND 65535);

CREATE TABLE auth_flags (
    key   text   PRIMARY KEY REFERENCES auth_requests (key),
    flags text[] NOT NULL CHECK (cardinality(flags) > 0)
);
CREATE TRIGGER auth_flags_append_only BEFORE UPDATE OR DELETE ON auth_flags
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER auth_flags_no_truncate BEFORE TRUNCATE ON auth_flags
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payswitch_app') THEN
        BEGIN
            GRANT SELECT, INSERT ON auth_flags TO payswitch_app;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot grant to payswitch_app; the host will run as the connecting user';
        END;
    END IF;
END $$;
