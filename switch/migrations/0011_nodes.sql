-- Several `switch serve` processes on one database (issue 20; switch/README.md, "Several switch nodes").

-- Every running node holds a lease row, renewed every lease/3. ``slot`` (0-9) partitions the outbound
-- link STANs between live nodes (DE7 + DE11 + DE32 + DE41 is the host's duplicate key). ``up_since``:
-- since when the node has renewed without a gap; a node may recover another's write-ahead only after
-- both the other's lease lapsed 3 leases ago and it has itself been up that long (after a database
-- outage nobody has, so nobody takes over a node that was only waiting for the database too).
-- Recovering a node deletes its row in the same transaction: its next renewal finds none and it stops.
CREATE TABLE switch_nodes (
    node_id     text        PRIMARY KEY,
    slot        smallint    NOT NULL CHECK (slot BETWEEN 0 AND 9),
    epoch       bigint      NOT NULL DEFAULT 1,
    started_at  timestamptz NOT NULL DEFAULT now(),
    up_since    timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

-- Whose write-ahead row: only that node (start-up, same node id) or the one that recovers it after its
-- lease lapsed turns it into a reversal. NULL: written before this migration (recovered by any start).
ALTER TABLE switch_write_ahead ADD COLUMN node_id text;

-- A retransmission handled by another node must get the first answer, never go upstream twice: the
-- second node's write-ahead insert of the same key conflicts here (one btree insert per row). A batch
-- written twice (lost commit acknowledgement) used to leave two rows of one upstream request: keep one.
DELETE FROM switch_write_ahead a USING switch_write_ahead b
WHERE a.dedup_key = b.dedup_key AND a.ctid < b.ctid;
CREATE UNIQUE INDEX switch_write_ahead_key ON switch_write_ahead (dedup_key);
CREATE INDEX switch_write_ahead_node ON switch_write_ahead (node_id);

-- Store-and-forward advices are claimed before they are sent, so two nodes never send the same
-- 0420/0421 at once: owner + epoch (+1 at every takeover: a result is written only by the claim's
-- holder) + claimed_until (a dead node's claim lapses and another takes the advice).
ALTER TABLE switch_saf
    ADD COLUMN claim_owner text,
    ADD COLUMN claim_epoch bigint NOT NULL DEFAULT 0,
    ADD COLUMN claimed_until timestamptz;
