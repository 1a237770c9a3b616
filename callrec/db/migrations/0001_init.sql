-- 0001: recordings, ingest jobs, provider events, API tokens, tenant keys and the audit log.

-- Per-tenant secrets that are not key-encryption keys themselves, e.g. the HMAC key behind
-- phone-number lookups. Stored wrapped by the tenant's KEK so that a database dump alone
-- cannot reverse a keyed hash by brute force over the phone-number space.
CREATE TABLE tenant_keys (
    tenant      text        NOT NULL,
    purpose     text        NOT NULL,
    wrapped     bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, purpose)
);

-- The durable ingest queue. A webhook is acknowledged only after its job row commits.
CREATE TABLE jobs (
    id            bigserial   PRIMARY KEY,
    tenant        text        NOT NULL,
    kind          text        NOT NULL,
    dedupe_key    text        NOT NULL,
    payload       jsonb       NOT NULL,
    state         text        NOT NULL DEFAULT 'queued'
                  CHECK (state IN ('queued', 'running', 'done', 'dead')),
    attempts      integer     NOT NULL DEFAULT 0,
    max_attempts  integer     NOT NULL,
    run_at        timestamptz NOT NULL DEFAULT now(),
    lease_until   timestamptz,
    locked_by     text,
    last_error    text,
    result        jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    -- A provider retrying a callback, or sending it twice, must not make a second job.
    UNIQUE (tenant, kind, dedupe_key)
);
-- Workers claim with ORDER BY run_at over runnable rows only; done jobs stay out of the index.
CREATE INDEX jobs_runnable ON jobs (run_at) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_dead ON jobs (tenant, updated_at) WHERE state = 'dead';

CREATE TABLE recordings (
    id                     uuid        PRIMARY KEY,
    tenant                 text        NOT NULL,
    provider               text        NOT NULL,
    call_id                text        NOT NULL,
    provider_recording_id  text        NOT NULL,
    state                  text        NOT NULL CHECK (state IN ('stored', 'destroyed')),
    started_at             timestamptz,
    stored_at              timestamptz NOT NULL,
    expires_at             timestamptz NOT NULL,
    duration_ms            integer     NOT NULL,
    channels               smallint    NOT NULL,
    sample_rate            integer     NOT NULL,
    format                 text        NOT NULL,
    codec                  text        NOT NULL,
    size_bytes             bigint      NOT NULL,
    sha256                 text        NOT NULL,
    object_key             text,
    object_version         text,
    ciphertext_bytes       bigint,
    wrapped_key            bytea,
    direction              text,
    from_sealed            bytea,
    to_sealed              bytea,
    from_hash              bytea,
    to_hash                bytea,
    announcement           jsonb       NOT NULL DEFAULT '{}',
    consent                jsonb       NOT NULL DEFAULT '{}',
    tags                   jsonb       NOT NULL DEFAULT '{}',
    agent                  text,
    source                 jsonb       NOT NULL DEFAULT '{}',
    UNIQUE (tenant, provider, provider_recording_id)
);
-- Keyset pagination of the API list: (tenant, stored_at, id) is the cursor.
CREATE INDEX recordings_page ON recordings (tenant, stored_at DESC, id DESC);
CREATE INDEX recordings_call ON recordings (tenant, call_id);
-- Exact phone-number search goes through keyed hashes, never plaintext.
CREATE INDEX recordings_from_hash ON recordings (tenant, from_hash);
CREATE INDEX recordings_to_hash ON recordings (tenant, to_hash);
-- The sweeper's scan (retention issue) and "expiring within N days" filters.
CREATE INDEX recordings_expiry ON recordings (expires_at) WHERE state = 'stored';

-- Provider status callbacks that are not recordings (RecordingStatus absent/failed).
CREATE TABLE provider_events (
    id                     bigserial   PRIMARY KEY,
    tenant                 text        NOT NULL,
    provider               text        NOT NULL,
    kind                   text        NOT NULL,
    call_id                text,
    provider_recording_id  text,
    details                jsonb       NOT NULL DEFAULT '{}',
    received_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, provider, kind, provider_recording_id)
);

CREATE TABLE api_tokens (
    id          uuid        PRIMARY KEY,
    tenant      text        NOT NULL,
    name        text        NOT NULL,
    token_hash  bytea       NOT NULL UNIQUE,
    scopes      text[]      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at  timestamptz
);

-- The audit log: append-only and hash-chained. seq is assigned by the writer under an
-- advisory lock as previous seq + 1 (not a sequence, which leaves gaps on rollback), so a
-- gap or a broken link is evidence of tampering.
CREATE TABLE audit_log (
    seq           bigint      PRIMARY KEY,
    at            timestamptz NOT NULL,
    tenant        text        NOT NULL,
    actor         text        NOT NULL,
    action        text        NOT NULL,
    recording_id  uuid,
    details       jsonb       NOT NULL,
    prev_hash     bytea       NOT NULL,
    hash          bytea       NOT NULL
);
CREATE INDEX audit_recording ON audit_log (tenant, recording_id, seq);
CREATE INDEX audit_tenant ON audit_log (tenant, seq);

-- The chain head, written in the same transaction as each entry: removing the newest
-- entries leaves the head pointing past the end of the table.
CREATE TABLE audit_head (
    id    boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq   bigint  NOT NULL,
    hash  bytea   NOT NULL
);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP;
END;
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
