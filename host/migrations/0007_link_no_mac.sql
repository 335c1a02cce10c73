-- A link without a MAC key is declared so (`host link ... --no-mac`), never assumed: a link row with
-- neither a ZAK nor no_mac is refused at request time (DE39 03), and a no-MAC link is accepted only
-- from a loopback peer unless `host.allow_remote_no_mac` is set. Existing rows without a ZAK stay
-- undeclared on purpose: an operator declares them, the migration does not.
ALTER TABLE links ADD COLUMN no_mac boolean NOT NULL DEFAULT false;
ALTER TABLE links ADD CONSTRAINT links_mac_or_no_mac CHECK (NOT (no_mac AND zak IS NOT NULL));
