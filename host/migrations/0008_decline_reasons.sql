-- Why a request was declined, kept with it (issue 15 item 7): a key of host.rules.REASONS such as
-- insufficient_funds, pin_missing, expiry_mismatch, daily_amount_limit; NULL when approved (and on the
-- rows decided before this migration). The response code alone cannot tell a missing PIN from a wrong
-- one (both 55 by the contract) or which limit was hit; `card history` and `pos` show the reason.
ALTER TABLE auth_requests ADD COLUMN reason text;
