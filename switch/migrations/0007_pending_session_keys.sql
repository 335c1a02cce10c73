-- A sign-on from a connection other than the terminal's live session does not end that session: its
-- new working keys (under the LMK) wait here until the new session's first MAC'd request verifies
-- under them (specs/README.md, "Terminal sessions"). Kept in the row, not only in memory, so that a
-- terminal that signed on just before a switch restart can still prove them after it.
ALTER TABLE switch_sessions
    ADD COLUMN pending_scheme text CHECK (pending_scheme IN ('3des', 'sm4')),
    ADD COLUMN pending_pik    text,
    ADD COLUMN pending_mak    text,
    ADD COLUMN pending_tdk    text,
    ADD COLUMN pending_at     timestamptz;
