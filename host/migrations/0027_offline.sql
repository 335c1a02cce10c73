-- Offline sales at the issuer (issue 19 item 4; host/offline.py, host/README.md "Offline advices",
-- specs/README.md "Offline sales").
--
-- * products.offline_floor_limit (fen): the most a terminal may approve offline for a card of the
--   product (0 = never offline). The switch reads it for the sign-on floor table (POS DE48 of 0810).
-- * an account kind 'offline_receivable', one per card, created the first time an advice does not fit
--   the card's available balance: an asset of the issuer (what the cardholder owes), debit-normal, so
--   its outstanding amount is debits_posted - credits_posted and it never goes below zero (a repayment
--   never exceeds what is owed: CHECK below). accounts.card_id names the card it belongs to (unique),
--   cards.offline_receivable_id points back (read with the card by the posting batch: no extra round
--   trip while a card owes nothing).
-- * transfers, three new codes:
--     'offline'            the advice: card -> merchant payable of the whole sale, key = the advice's
--                          request key (auth_requests.key, its natural key, see below); in the
--                          clearing file as a PURCHASE (the merchant is paid the whole sale);
--     'offline_shortfall'  receivable -> card of the part the available balance did not cover, posted
--                          with the advice in the same batch, key = '<advice key>:shortfall',
--                          original_key = the advice key;
--     'offline_repay'      card -> receivable, posted with a top-up or load that repays (part of) what is
--                          owed, key = '<load key>:repay', original_key = the load's key.
--   shortfall and repay move money between a card and the issuer's own account, no merchant: the
--   clearing file leaves them out.
-- * the advice's natural key: auth_requests.key of an offline advice is
--   'offline:<DE42>:<DE41>:<POS batch>:<terminal STAN>' (host.h2h), not DE32:DE7:DE11:DE41:MTI, so a
--   repeated advice, whatever DE7/DE11 the switch gave it, is a duplicate of the first (the primary key
--   makes it one across restarts and concurrent batches) and posts nothing again.

ALTER TABLE products ADD COLUMN offline_floor_limit bigint NOT NULL DEFAULT 0
    CHECK (offline_floor_limit >= 0);

ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('card', 'merchant', 'funding', 'settled', 'fee_income', 'cash_out', 'cash_out_paid',
                    'breakage', 'offline_receivable'));
ALTER TABLE accounts ADD COLUMN card_id bigint;
ALTER TABLE accounts ADD CONSTRAINT accounts_receivable_card
    CHECK ((kind = 'offline_receivable') = (card_id IS NOT NULL));
ALTER TABLE accounts ADD CONSTRAINT offline_receivable_not_negative
    CHECK (kind <> 'offline_receivable'
           OR (credits_posted <= debits_posted AND debits_pending = 0 AND credits_pending = 0));
CREATE UNIQUE INDEX accounts_offline_receivable ON accounts (card_id) WHERE kind = 'offline_receivable';

ALTER TABLE cards ADD COLUMN offline_receivable_id bigint;

ALTER TABLE transfers DROP CONSTRAINT transfers_code_check;
ALTER TABLE transfers ADD CONSTRAINT transfers_code_check
    CHECK (code IN ('purchase', 'topup', 'refund', 'void', 'preauth', 'completion', 'preauth_void',
                    'reversal', 'expiry', 'admin_load', 'admin_unload', 'forfeit', 'cash_out_payout',
                    'settlement', 'replacement', 'offline', 'offline_shortfall', 'offline_repay'));
ALTER TABLE transfers ADD CONSTRAINT transfers_offline_shape
    CHECK (code NOT IN ('offline', 'offline_shortfall', 'offline_repay') OR phase = 'single');
ALTER TABLE transfers ADD CONSTRAINT transfers_offline_legs_shape
    CHECK ((code <> 'offline_shortfall' OR (original_key IS NOT NULL AND key = original_key || ':shortfall'))
           AND (code <> 'offline_repay' OR (original_key IS NOT NULL AND key = original_key || ':repay')));

-- As 0015's, with the advice a PURCHASE and its shortfall and repayments left out.
CREATE OR REPLACE VIEW clearing_postings AS
SELECT t.id AS posting_id,
       CASE t.code
           WHEN 'purchase' THEN 'PURCHASE' WHEN 'completion' THEN 'COMPLETION' WHEN 'refund' THEN 'REFUND'
           WHEN 'void' THEN 'VOID' WHEN 'reversal' THEN 'REVERSAL' WHEN 'offline' THEN 'PURCHASE'
           ELSE 'TOPUP' END AS txn_type,
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
  AND t.code NOT IN ('preauth', 'preauth_void', 'expiry', 'admin_unload', 'forfeit', 'cash_out_payout',
                     'replacement', 'offline_shortfall', 'offline_repay');
