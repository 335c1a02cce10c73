-- Cash-outs paid to the cardholder's bank account (issue 16 item 5; settlement/cashouts.py): each
-- settlement_cashouts row records where it was paid, copied from the host's unload_destinations row
-- of its unload (host/migrations/0019): `bank_account` with the cardholder, bank name, the account
-- number as the host stores it (HSM ciphertext under the issuer's pii_data key: only the bank
-- gateway's HSM turns it back; never clear here), its masked form and the holder's name; or `desk`
-- (paid at the programme's desk: the card had no cardholder or no bank account, or the operator said
-- so, and every cash-out paid before this migration).
ALTER TABLE settlement_cashouts
    ADD COLUMN payee          text NOT NULL DEFAULT 'desk' CHECK (payee IN ('bank_account', 'desk')),
    ADD COLUMN cardholder_id  bigint,          -- host cardholders.id (bank_account only)
    ADD COLUMN bank_name      text,
    ADD COLUMN account_enc    text,
    ADD COLUMN account_masked text,
    ADD COLUMN account_holder text,
    ADD CONSTRAINT settlement_cashouts_payee CHECK (
        (payee = 'bank_account') = (account_enc IS NOT NULL)
        AND (payee = 'desk' OR (cardholder_id IS NOT NULL AND bank_name IS NOT NULL
                                AND account_masked IS NOT NULL AND account_holder IS NOT NULL)));
