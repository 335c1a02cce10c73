-- What became of every record of a terminal's batch upload (0320), and of every approved request the
-- terminal did not upload (issue 19, specs/README.md "Batch upload"): the reconciliation report
-- (`payswitch switch batch-report`) reads it. One row per record per 0320 (a record repeated gets a
-- row 'duplicate'), one row 'terminal_lacks' per journal approval missing from the upload. No clear PAN.
CREATE TABLE switch_upload_results (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at   timestamptz NOT NULL DEFAULT now(),
    terminal_id  text        NOT NULL,
    merchant_id  text        NOT NULL,
    batch_no     integer     NOT NULL,
    stan         text        NOT NULL,   -- the record's (or the journal request's) terminal STAN
    pan_masked   text,
    amount       bigint      NOT NULL,
    result       text        NOT NULL
        CHECK (result IN ('matched', 'posted', 'duplicate', 'not_posted', 'terminal_lacks')),
    detail       text        NOT NULL DEFAULT '',   -- why, one word (switch/upload.py DETAILS)
    link         text,                              -- the advice sent upstream for it, if any
    link_stan    text,
    link_de7     text
);
CREATE INDEX switch_upload_results_batch ON switch_upload_results (terminal_id, merchant_id, batch_no);
-- The switch's own guard against posting a record twice (the host's natural key is the other): one
-- 'posted' row per terminal, batch and STAN, whatever the number of uploads.
CREATE UNIQUE INDEX switch_upload_results_posted ON switch_upload_results (terminal_id, merchant_id, batch_no, stan)
    WHERE result = 'posted';
