-- 0004: staff accounts and server-side portal sessions.

CREATE TABLE staff_users (
    id               uuid        PRIMARY KEY,
    tenant           text        NOT NULL,
    -- One account per e-mail address across tenants: the login form names no tenant.
    email            text        NOT NULL UNIQUE,
    role             text        NOT NULL CHECK (role IN ('support', 'supervisor', 'privacy', 'legal', 'auditor', 'admin')),
    password_hash    text        NOT NULL,
    totp_sealed      bytea       NOT NULL,
    mfa_enrolled_at  timestamptz,
    recovery_hashes  text[]      NOT NULL DEFAULT '{}',
    failed_logins    integer     NOT NULL DEFAULT 0,
    locked_until     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    disabled_at      timestamptz
);
CREATE INDEX staff_users_tenant ON staff_users (tenant, role);

-- The cookie carries a random id; only its hash is stored, so a database read cannot hijack a session.
CREATE TABLE staff_sessions (
    id_hash       bytea       PRIMARY KEY,
    user_id       uuid        NOT NULL REFERENCES staff_users (id),
    tenant        text        NOT NULL,
    csrf_token    text        NOT NULL,
    mfa_passed    boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX staff_sessions_user ON staff_sessions (user_id);

-- "Give a reason before the first play": the reason a staff member gave to open a recording in
-- this session; every listen's audit entry refers to it.
CREATE TABLE portal_access_grants (
    session_hash  bytea       NOT NULL REFERENCES staff_sessions (id_hash) ON DELETE CASCADE,
    recording_id  uuid        NOT NULL,
    reason        text        NOT NULL,
    granted_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_hash, recording_id)
);
