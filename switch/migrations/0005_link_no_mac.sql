-- An inbound link without a MAC key is declared so (`switch link add --direction in --no-mac`), never
-- assumed: an in link with neither a ZAK nor no_mac is refused (DE39 03), and a no-MAC link is accepted
-- only from a loopback peer unless `switch.allow_remote_no_mac` is set. Existing rows stay undeclared
-- on purpose: an operator declares them, the migration does not.
ALTER TABLE switch_links ADD COLUMN no_mac boolean NOT NULL DEFAULT false;
ALTER TABLE switch_links ADD CONSTRAINT switch_links_mac_or_no_mac CHECK (NOT (no_mac AND zak IS NOT NULL));
