-- Money out of a card (issue 15 item 2): `card unload` and `card close --forfeit`.
--
-- * accounts, three kinds, each one per currency (part 0; unloads and forfeits are a handful of
--   operator actions a day, not the hot path, so no partition spreading is needed and each total is
--   one row):
--   - cash_out: the cash-out payable. `card unload` (code 'admin_unload') moves a card's money here;
--     settlement pays it out (code 'cash_out_payout'). no_overdraft: the database itself refuses to
--     pay out more than was unloaded.
--   - cash_out_paid: what settlement has paid out to cardholders (the cash-out side's 'settled').
--   - breakage: breakage income. `card close --forfeit` (code 'forfeit') moves a card's whole balance
--     here in the transaction that closes the card.
-- * transfers, two new codes:
--   - 'forfeit': card account -> breakage; its request is an auth_requests row like an unload's.
--   - 'cash_out_payout': cash_out -> cash_out_paid, written by the settlement job with SQL (it does
--     not import host): card_id = the unload's card, original_key = the unload's key, and
--     key = 'cashout:' || original_key. The unique key makes a cash-out paid at most once; the shape
--     check makes the key name its unload.
-- * clearing_postings leaves the three codes out: they move money between a card and the issuer's own
--   accounts, not a merchant, and the clearing file cannot express them (settlement reads them from
--   the ledger instead, settlement/README.md "Cash-outs").
-- `ledger check` names what is proved about them (host/check.py: cash_out_from_unloads_only,
-- cash_out_paid_once, breakage_from_forfeits_only).

ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('card', 'merchant', 'funding', 'settled', 'fee_income', 'cash_out', 'cash_out_paid',
                    'breakage'));
CREATE UNIQUE INDEX accounts_cash_out ON accounts (currency) WHERE kind = 'cash_out';
CREATE UNIQUE INDEX accounts_cash_out_paid ON accounts (currency) WHERE kind = 'cash_out_paid';
CREATE UNIQUE INDEX accounts_breakage ON accounts (currency) WHERE kind = 'breakage';

ALTER TABLE transfers DROP CONSTRAINT transfers_code_check;
ALTER TABLE transfers ADD CONSTRAINT transfers_code_check
    CHECK (code IN ('purchase', 'topup', 'refund', 'void', 'preauth', 'completion', 'preauth_void',
                    'reversal', 'expiry', 'admin_load', 'admin_unload', 'forfeit', 'cash_out_payout',
                    'settlement'));
ALTER TABLE transfers ADD CONSTRAINT transfers_cash_out_payout_shape
    CHECK (code <> 'cash_out_payout'
           OR (phase = 'single' AND original_key IS NOT NULL AND key = 'cashout:' || original_key));
-- settlement finds the unloads not yet paid
CREATE INDEX transfers_unloads ON transfers (id) WHERE code = 'admin_unload';

CREATE OR REPLACE VIEW clearing_postings AS
SELECT t.id AS posting_id,
       CASE t.code
           WHEN 'purchase' THEN 'PURCHASE' WHEN 'completion' THEN 'COMPLETION' WHEN 'refund' THEN 'REFUND'
           WHEN 'void' THEN 'VOID' WHEN 'reversal' THEN 'REVERSAL' ELSE 'TOPUP' END AS txn_type,
       o.id AS original_posting_id,
       coalesce(r.acquirer_id, m.acquirer_id, '') AS acquirer_id,
       coalesce(m.merchant_id, '') AS merchant_id,
       coalesce(s.code, '') AS store_id,
       coalesce(r.terminal_id, '') AS terminal_id,
       c.pan_masked,
       pr.code AS product_code,
       t.amount,
       CASE WHEN ca.kind = 'card' AND t.debit_account_id = ca.id THEN 'D' ELSE 'C' END AS sign,
       coalesce(m.fee_rate_bps, 0) AS fee_rate_bps,
       coalesce(m.fee_rate_version, 0) AS fee_rate_version,
       coalesce(r.rrn, '') AS rrn,
       coalesce(r.stan, '') AS stan,
       coalesce(r.auth_id, '') AS auth_id,
       coalesce(r.local_time, '') AS local_time,
       t.currency,
       t.created_at AS posted_at
FROM transfers t
JOIN cards c ON c.id = t.card_id
JOIN accounts ca ON ca.id = c.account_id
JOIN products pr ON pr.id = c.product_id
LEFT JOIN auth_requests r ON r.key = t.key
LEFT JOIN transfers o ON o.key = t.original_key
LEFT JOIN accounts ma ON ma.id = CASE WHEN t.debit_account_id = ca.id THEN t.credit_account_id
                                      ELSE t.debit_account_id END AND ma.kind = 'merchant'
LEFT JOIN merchants m ON m.id = ma.merchant_id
LEFT JOIN terminals tm ON tm.terminal_id = r.terminal_id AND tm.merchant_id = m.id
LEFT JOIN stores s ON s.id = tm.store_id
WHERE t.phase IN ('single', 'post_pending')
  AND t.code NOT IN ('preauth', 'preauth_void', 'expiry', 'admin_unload', 'forfeit', 'cash_out_payout');
