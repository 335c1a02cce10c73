-- AML screening (issue 16 item 3, host.aml): watch lists, screenings, hits and operators' decisions.
--
-- * aml_imports (append-only): every import of a watch list: the list, the file's name and SHA-256,
--   its rows, who (`cli:<unix user>`) and when. A file holding several lists is one row per list.
-- * aml_lists: the lists in force, each with the import whose entries it has now (the row is updated,
--   and so locked, by every import of the list: two imports of one list queue).
-- * aml_entries: the entries of the imports in force (an import deletes the list's previous entries in
--   the same transaction). Names on a watch list are not our cardholders' data: kept in clear, with
--   `forms`, the normalised strings matching compares (host.aml.forms), and `form_names`, which name each
--   form is of (0 the name, i the i-th alias). birth_year alone: the list gives only the year.
--   fingerprint: SHA-256 of the entry's normalised content (an operator's clearing holds while it is
--   the same).
-- * aml_screenings (append-only): every screening of a cardholder: threshold, the imports screened
--   against, how many entries, how many hits.
-- * aml_hits: what screening found, kept with a copy of the entry (entries are replaced by imports,
--   hits are not), the name and date of birth screened, score and scorer; pending until an operator
--   clears or confirms it (decided_by, decided_at, reason). At most one pending hit per cardholder and
--   entry (list, reference). Never deleted.

CREATE TABLE aml_imports (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    list_name   text        NOT NULL CHECK (length(list_name) BETWEEN 1 AND 64),
    file_name   text        NOT NULL,
    file_sha256 text        NOT NULL CHECK (file_sha256 ~ '^[0-9a-f]{64}$'),
    rows        integer     NOT NULL CHECK (rows >= 0),
    actor       text        NOT NULL CHECK (actor <> ''),
    imported_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX aml_imports_list ON aml_imports (list_name, id);
CREATE TRIGGER aml_imports_append_only BEFORE UPDATE OR DELETE ON aml_imports
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

CREATE TABLE aml_lists (
    name      text   PRIMARY KEY,
    import_id bigint NOT NULL REFERENCES aml_imports (id)
);

CREATE TABLE aml_entries (
    id          bigint     GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    import_id   bigint     NOT NULL REFERENCES aml_imports (id),
    list_name   text       NOT NULL,
    reference   text       NOT NULL CHECK (reference <> ''),
    name        text       NOT NULL CHECK (name <> ''),
    aliases     text[]     NOT NULL DEFAULT '{}',
    birth_year  smallint,
    birth_date  date,
    forms       text[]     NOT NULL,
    form_names  smallint[] NOT NULL,
    fingerprint text       NOT NULL,
    UNIQUE (import_id, reference),
    CHECK (birth_date IS NULL OR birth_year = extract(year FROM birth_date)),
    CHECK (cardinality(forms) = cardinality(form_names) AND cardinality(forms) > 0)
);
CREATE INDEX aml_entries_list ON aml_entries (list_name);

CREATE TABLE aml_screenings (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cardholder_id bigint      NOT NULL REFERENCES cardholders (id),
    threshold     smallint    NOT NULL CHECK (threshold BETWEEN 0 AND 100),
    imports       bigint[]    NOT NULL,
    entries       integer     NOT NULL CHECK (entries >= 0),
    hits          integer     NOT NULL CHECK (hits >= 0),
    at            timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX aml_screenings_cardholder ON aml_screenings (cardholder_id, id);
CREATE TRIGGER aml_screenings_append_only BEFORE UPDATE OR DELETE ON aml_screenings
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

CREATE TABLE aml_hits (
    id                  bigint       GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cardholder_id       bigint       NOT NULL REFERENCES cardholders (id),
    screening_id        bigint       NOT NULL REFERENCES aml_screenings (id),
    import_id           bigint       NOT NULL REFERENCES aml_imports (id),
    list_name           text         NOT NULL,
    reference           text         NOT NULL,
    entry_name          text         NOT NULL,
    matched_name        text         NOT NULL,
    entry_birth         text,
    fingerprint         text         NOT NULL,
    screened_name       text         NOT NULL,
    screened_birth_date date,
    score               numeric(4,1) NOT NULL CHECK (score BETWEEN 0 AND 100),
    scorer              text         NOT NULL CHECK (scorer IN ('token_sort', 'token_set')),
    found_at            timestamptz  NOT NULL DEFAULT clock_timestamp(),
    decision            text         NOT NULL DEFAULT 'pending'
                        CHECK (decision IN ('pending', 'cleared', 'confirmed')),
    decided_by          text,
    decided_at          timestamptz,
    reason              text,
    CHECK ((decision = 'pending') = (decided_by IS NULL)
           AND (decided_by IS NULL) = (decided_at IS NULL)
           AND (decided_by IS NULL) = (reason IS NULL))
);
CREATE UNIQUE INDEX aml_hits_pending ON aml_hits (cardholder_id, list_name, reference)
    WHERE decision = 'pending';
CREATE INDEX aml_hits_cardholder ON aml_hits (cardholder_id, id);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payswitch_app') THEN
        BEGIN
            GRANT SELECT, INSERT ON aml_imports, aml_screenings TO payswitch_app;
            GRANT SELECT, INSERT, UPDATE ON aml_lists, aml_hits TO payswitch_app;
            GRANT SELECT, INSERT, DELETE ON aml_entries TO payswitch_app;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot grant to payswitch_app; the host will run as the connecting user';
        END;
    END IF;
END $$;
