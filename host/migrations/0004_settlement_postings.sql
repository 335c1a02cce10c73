-- Settlement postings in the host ledger: a payout moves the merchant's payable to its settled account
-- (net) and to the fee earners (the fee), as card-less transfers of code 'settlement'.
--
-- * accounts: kind 'settled' (one per merchant: what has been paid out to it) and 'fee_income' (one per
--   party and currency: 'issuer', 'platform', 'acquirer:<institution>'; `party` names it).
-- * ledger_settlements (append-only): one row per payout, written by the settlement job in the same
--   transaction as its transfers; it is what backs a settlement transfer the way an approved
--   auth_requests row backs a card transfer. reference = the payout reference; every leg of the payout
--   has original_key = reference and key = 'settle:' || reference || ':' || leg number (unique: a
--   payout is posted once, a re-run posts nothing twice).
-- * transfers: code 'settlement'; the card is required on every other code and absent on settlement.
-- The settlement job writes these rows with SQL (it does not import the host); see settlement/README.md
-- ("Ledger postings") for the contract and host/check.py for what `ledger check` proves about them.

ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('card', 'merchant', 'funding', 'settled', 'fee_income'));
ALTER TABLE accounts ADD COLUMN party text;

-- 0001's unnamed CHECK ((kind = 'merchant') = (merchant_id IS NOT NULL)) becomes: payable and settled
-- accounts belong to a merchant, nothing else does.
DO $$
DECLARE
    c text;
BEGIN
    SELECT conname INTO c FROM pg_constraint
    WHERE conrelid = 'accounts'::regclass AND contype = 'c'
      AND pg_get_constraintdef(oid) LIKE '%merchant_id IS NOT NULL%';
    IF c IS NOT NULL THEN
        EXECUTE format('ALTER TABLE accounts DROP CONSTRAINT %I', c);
    END IF;
END $$;
ALTER TABLE accounts ADD CONSTRAINT accounts_merchant_kinds
    CHECK ((kind IN ('merchant', 'settled')) = (merchant_id IS NOT NULL));
ALTER TABLE accounts ADD CONSTRAINT accounts_fee_party
    CHECK ((kind = 'fee_income') = (party IS NOT NULL) AND (party IS NULL OR party ~ '^(issuer|platform|acquirer:.*)$'));
CREATE UNIQUE INDEX accounts_settled ON accounts (merchant_id) WHERE kind = 'settled';
CREATE UNIQUE INDEX accounts_fee_income ON accounts (party, currency) WHERE kind = 'fee_income';

ALTER TABLE transfers DROP CONSTRAINT transfers_code_check;
ALTER TABLE transfers ADD CONSTRAINT transfers_code_check
    CHECK (code IN ('purchase', 'topup', 'refund', 'void', 'preauth', 'completion', 'preauth_void',
                    'reversal', 'expiry', 'admin_load', 'admin_unload', 'settlement'));
ALTER TABLE transfers ALTER COLUMN card_id DROP NOT NULL;
ALTER TABLE transfers ADD CONSTRAINT transfers_card_unless_settlement
    CHECK ((code = 'settlement') = (card_id IS NULL));
ALTER TABLE transfers ADD CONSTRAINT transfers_settlement_shape
    CHECK (code <> 'settlement' OR (phase = 'single' AND original_key IS NOT NULL AND key LIKE 'settle:%'));

CREATE TABLE ledger_settlements (
    reference   text        PRIMARY KEY,                 -- settlement_payouts.reference
    run_id      bigint      NOT NULL,                    -- settlement_runs.id
    merchant_id bigint      NOT NULL REFERENCES merchants (id),
    currency    char(3)     NOT NULL,
    gross       bigint      NOT NULL CHECK (gross > 0),  -- debited from the merchant's payable
    fee         bigint      NOT NULL,                    -- to the fee earners (negative: fees returned)
    net         bigint      NOT NULL CHECK (net > 0),    -- credited to the merchant's settled account
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (net = gross - fee)
);
CREATE TRIGGER ledger_settlements_append_only BEFORE UPDATE OR DELETE ON ledger_settlements
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_settlements_no_truncate BEFORE TRUNCATE ON ledger_settlements
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payswitch_app') THEN
        BEGIN
            GRANT SELECT ON ledger_settlements TO payswitch_app;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot grant to payswitch_app; the host will run as the connecting user';
        END;
    END IF;
END $$;
