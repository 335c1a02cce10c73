-- A programme-funded load from the HTTP API (issue 17; specs/README.md "API payments and loads") carries
-- its funding reference in DE102; the host keeps it with the request, where `card history` shows it.
ALTER TABLE auth_requests ADD COLUMN reference text;
