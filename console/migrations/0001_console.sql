-- The console's operators and their sessions (issue 18 item 1; console/operators.py).
--
-- * operators: name, role (viewer < operator < supervisor < admin), the argon2id hash of the password
--   (argon2-cffi's encoded form: algorithm, parameters, salt and hash), the TOTP secret sealed under the
--   issuer's PII data key as host.pii seals (never in clear), whether its enrolment was confirmed,
--   failed logins in a row and the lockout they caused, disabled_at. email_sealed + email_hash: where
--   risk alerts go (sealed; the keyed hash finds an operator by address), alerts: subscribed or not.
-- * operator_sessions: one row per login; the cookie carries a random token, only its SHA-256 is stored.
--   stage 'password' (password right, TOTP still to give) or 'full'. csrf: the session's CSRF token for
--   every form. Ended by logout, the idle timeout (seen_at) or the absolute one (created_at).

CREATE TABLE operators (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text        NOT NULL UNIQUE CHECK (name ~ '^[a-z][a-z0-9._-]{1,31}$'),
    role            text        NOT NULL CHECK (role IN ('viewer', 'operator', 'supervisor', 'admin')),
    password_hash   text        NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    totp_sealed     text        NOT NULL,
    totp_enrolled   boolean     NOT NULL DEFAULT false,
    totp_last_step  bigint,     -- the last TOTP time step accepted: a code is never accepted twice
    failed_logins   integer     NOT NULL DEFAULT 0,
    locked_until    timestamptz,
    email_sealed    text,
    email_hash      text,
    alerts          boolean     NOT NULL DEFAULT false,
    disabled_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text        NOT NULL DEFAULT ''
);

CREATE TABLE operator_sessions (
    token_hash   text        PRIMARY KEY CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    operator_id  bigint      NOT NULL REFERENCES operators (id),
    stage        text        NOT NULL CHECK (stage IN ('password', 'full')),
    csrf         text        NOT NULL,
    address      text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    seen_at      timestamptz NOT NULL DEFAULT now(),
    ended_at     timestamptz
);
CREATE INDEX operator_sessions_operator ON operator_sessions (operator_id);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payswitch_app') THEN
        BEGIN
            GRANT SELECT, INSERT, UPDATE ON operators, operator_sessions TO payswitch_app;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'cannot grant to payswitch_app; the console will run as the connecting user';
        END;
    END IF;
END $$;
