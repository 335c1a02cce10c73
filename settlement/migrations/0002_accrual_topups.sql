-- Cash top-ups taken at a merchant's terminal: the host debits the merchant's payable (the merchant
-- holds the cash), so they reduce what the merchant is paid. Kept apart from returns in reports.
ALTER TABLE settlement_accruals ADD COLUMN topups bigint NOT NULL DEFAULT 0;
