-- Live configuration and switch-initiated key change on outbound links.
--
-- A running switch polls switch_config.version every `switch.config_poll_s` seconds (one row, one
-- index-free read) and reloads links and routes when it moved. Every statement that changes
-- switch_links or switch_routes bumps it through the triggers below, whoever makes the change (the
-- CLI, or plain SQL by an operator).

-- The link ZMK under the LMK (U.../S...): the new ZPK of a key change (0800 DE70 101) travels under it.
ALTER TABLE switch_links ADD COLUMN zmk text;
-- Check value (16H) of the current ZPK, kept when the switch changed the key.
ALTER TABLE switch_links ADD COLUMN zpk_check text;
-- Set by `payswitch switch link rekey NAME`; the switch clears it when the exchange is done.
ALTER TABLE switch_links ADD COLUMN rekey_requested_at timestamptz;
-- When the switch last changed the link's ZPK (for `switch.link_rekey_hours`).
ALTER TABLE switch_links ADD COLUMN rekeyed_at timestamptz;

CREATE TABLE switch_config (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    version  bigint  NOT NULL DEFAULT 1
);
INSERT INTO switch_config (id, version) VALUES (true, 1);

CREATE FUNCTION switch_config_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE switch_config SET version = version + 1 WHERE id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER switch_links_config_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON switch_links
    FOR EACH STATEMENT EXECUTE FUNCTION switch_config_bump();
CREATE TRIGGER switch_routes_config_bump AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON switch_routes
    FOR EACH STATEMENT EXECUTE FUNCTION switch_config_bump();
