-- Why the switch answered a request as it did when it decided the answer itself (switch/reasons.py:
-- no_route, link_down, upstream_timeout, mac_failed, ...); NULL when the issuer decided (its reason
-- is the issuer's own: the host keeps it in auth_requests.reason) and on rows made before this.
-- `switch journal show` shows it beside the response code; settlement does not read it.
ALTER TABLE switch_journal ADD COLUMN reason text;
