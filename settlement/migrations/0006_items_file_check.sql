-- Every settlement_items row names its settlement_files row: checked once per statement, not per row
-- (issue 21). The foreign key fired a trigger, a lookup and a key-share row lock for each detail: about
-- half of PostgreSQL's CPU when a clearing file of a million details is copied in. The same rule, held
-- by statement-level triggers:
-- - the rows an INSERT, COPY or UPDATE wrote (its transition table) are checked in one statement: the
--   files they name must exist, and are locked FOR KEY SHARE as the foreign key locked them (once per
--   file, not per detail), so a concurrent delete or renumbering of such a file waits for this
--   transaction and then sees its items;
-- - a settlement file that has items is never deleted, renumbered or truncated. Outside READ COMMITTED
--   a delete or renumbering would check the items with an old snapshot (the foreign key uses a newer
--   one for exactly this), so there it is refused outright. (Nothing deletes settlement files: the
--   importer writes a file's row and its items in one transaction, under the settlement advisory lock.)
ALTER TABLE settlement_items DROP CONSTRAINT settlement_items_file_id_fkey;

CREATE FUNCTION settlement_items_file_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    named bigint;
    found bigint;
BEGIN
    SELECT count(DISTINCT file_id) INTO named FROM settlement_items_written;
    SELECT count(*) INTO found FROM (
        SELECT 1 FROM settlement_files f
        WHERE f.id IN (SELECT file_id FROM settlement_items_written)
        FOR KEY SHARE OF f
    ) locked;
    IF found <> named THEN
        RAISE EXCEPTION 'settlement_items: file_id names no settlement_files row'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER settlement_items_file_insert AFTER INSERT ON settlement_items
    REFERENCING NEW TABLE AS settlement_items_written
    FOR EACH STATEMENT EXECUTE FUNCTION settlement_items_file_check();
CREATE TRIGGER settlement_items_file_update AFTER UPDATE ON settlement_items
    REFERENCING NEW TABLE AS settlement_items_written
    FOR EACH STATEMENT EXECUTE FUNCTION settlement_items_file_check();

CREATE FUNCTION settlement_files_keep_items() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        IF EXISTS (SELECT 1 FROM settlement_items) THEN
            RAISE EXCEPTION 'settlement_files: settlement_items still reference it'
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.id IS NOT DISTINCT FROM OLD.id THEN
        RETURN NEW;
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'settlement_files %: deleted or renumbered only in READ COMMITTED', OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM settlement_items WHERE file_id = OLD.id) THEN
        RAISE EXCEPTION 'settlement_files %: settlement_items still reference it', OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF TG_OP = 'UPDATE' THEN
        RETURN NEW;
    END IF;
    RETURN OLD;
END
$$;

CREATE TRIGGER settlement_files_keep_items BEFORE DELETE OR UPDATE OF id ON settlement_files
    FOR EACH ROW EXECUTE FUNCTION settlement_files_keep_items();
CREATE TRIGGER settlement_files_keep_items_truncate BEFORE TRUNCATE ON settlement_files
    FOR EACH STATEMENT EXECUTE FUNCTION settlement_files_keep_items();
