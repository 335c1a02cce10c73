-- Card replacement (issue 16 item 4): `card replace CARD --reason lost|stolen|damaged|expiring`.
--
-- * transfers, one new code 'replacement': the old card's whole balance to the new card, in the
--   transaction that blocks the old card and hands its cardholder and today's limits used to the new
--   one (host.replace, host.ledger). Its shape: a single-phase posting whose key is
--   'replace:<old card id>' (one replacement per card: the key is unique, so a retry replaces once)
--   and whose original_key is 'card:<old card id>' (the old card's id as the reference); card_id is
--   the OLD card (the card the money left, as an unload's or a forfeit's card_id is the card debited).
--   The request is an auth_requests row like a forfeit's (txn 'replacement', key the same); an empty
--   card is replaced without a transfer (its request is answered 00, not posted).
-- * clearing_postings leaves 'replacement' out: it moves money from card to card of the same
--   cardholder, no merchant is part of it, and the clearing file cannot express it.
-- `ledger check` names what is proved about it (host/check.py: replacement_moves_whole_balance).

ALTER TABLE transfers DROP CONSTRAINT transfers_code_check;
ALTER TABLE transfers ADD CONSTRAINT transfers_code_check
    CHECK (code IN ('purchase', 'topup', 'refund', 'void', 'preauth', 'completion', 'preauth_void',
                    'reversal', 'expiry', 'admin_load', 'admin_unload', 'forfeit', 'cash_out_payout',
                    'settlement', 'replacement'));
ALTER TABLE transfers ADD CONSTRAINT transfers_replacement_shape
    CHECK (code <> 'replacement'
           OR (phase = 'single' AND key = 'replace:' || card_id AND original_key = 'card:' || card_id));

-- The card a card was replaced by is named once: `card show` of the new card finds what it replaces.
CREATE UNIQUE INDEX cards_replaced_by ON cards (replaced_by) WHERE replaced_by IS NOT NULL;
-- inventory report: stock by product, issue batch and state
CREATE INDEX cards_inventory ON cards (product_id, issue_batch, state);

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
  AND t.code NOT IN ('preauth', 'preauth_void', 'expiry', 'admin_unload', 'forfeit', 'cash_out_payout',
                     'replacement');
