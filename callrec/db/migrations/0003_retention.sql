-- 0003: legal holds, deletion requests with per-recording outcomes, restriction, access requests.

-- A legal hold stops every deletion of the recordings it covers: expiry, requests, by hand.
-- Its scope is a conjunction of the criteria that are set (each list matches any of its items),
-- evaluated against recordings that exist now and those ingested later, until release.
CREATE TABLE legal_holds (
    id                   uuid        PRIMARY KEY,
    tenant               text        NOT NULL,
    matter               text        NOT NULL,
    reason               text        NOT NULL,
    created_by           text        NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    review_at            date,
    scope_recording_ids  uuid[],
    scope_call_ids       text[],
    scope_phone_hashes   bytea[],
    scope_from           timestamptz,
    scope_to             timestamptz,
    scope_agent          text,
    released_at          timestamptz,
    released_by          text,
    release_reason       text,
    CHECK (scope_recording_ids IS NOT NULL OR scope_call_ids IS NOT NULL OR scope_phone_hashes IS NOT NULL
           OR scope_from IS NOT NULL OR scope_to IS NOT NULL OR scope_agent IS NOT NULL)
);
-- Every erasure asks "is any active hold of this tenant covering it?".
CREATE INDEX legal_holds_active ON legal_holds (tenant) WHERE released_at IS NULL;

-- Does hold h cover recording r? The same rule as callrec.retention.holds.covers (tested against it).
CREATE FUNCTION hold_covers(h legal_holds, r recordings) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT h.tenant = r.tenant
       AND (h.scope_recording_ids IS NULL OR r.id = ANY (h.scope_recording_ids))
       AND (h.scope_call_ids IS NULL OR r.call_id = ANY (h.scope_call_ids))
       AND (h.scope_phone_hashes IS NULL
            OR r.from_hash = ANY (h.scope_phone_hashes) OR r.to_hash = ANY (h.scope_phone_hashes))
       AND (h.scope_from IS NULL OR coalesce(r.started_at, r.stored_at) >= h.scope_from)
       AND (h.scope_to IS NULL OR coalesce(r.started_at, r.stored_at) < h.scope_to)
       AND (h.scope_agent IS NULL OR r.agent = h.scope_agent)
$$;

-- GDPR Art. 17 / CCPA deletion requests.
CREATE TABLE deletion_requests (
    id                    uuid        PRIMARY KEY,
    tenant                text        NOT NULL,
    subject_kind          text        NOT NULL CHECK (subject_kind IN ('phone', 'call_id', 'recording_ids')),
    subject_phone_hash    bytea,
    subject_call_id       text,
    subject_recording_ids uuid[],
    law                   text        NOT NULL CHECK (law IN ('gdpr', 'ccpa')),
    reason                text,
    external_ref          text,
    callback_url          text,
    idempotency_key       text,
    request_hash          text        NOT NULL,
    status                text        NOT NULL DEFAULT 'received' CHECK (status IN (
                              'received', 'processing', 'completed', 'partially_completed', 'rejected')),
    rejection_reason      text,
    created_by            text        NOT NULL,
    received_at           timestamptz NOT NULL DEFAULT now(),
    due_at                timestamptz NOT NULL,
    completed_at          timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, idempotency_key)
);
CREATE INDEX deletion_requests_open ON deletion_requests (tenant, due_at)
    WHERE status IN ('received', 'processing', 'partially_completed');

CREATE TABLE deletion_outcomes (
    request_id    uuid        NOT NULL REFERENCES deletion_requests (id),
    recording_id  uuid        NOT NULL,
    outcome       text        NOT NULL CHECK (outcome IN ('deleted', 'withheld_legal_hold', 'already_deleted')),
    hold_id       uuid,
    decided_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz,
    audit_seq     bigint,
    PRIMARY KEY (request_id, recording_id)
);
-- Releasing a hold finds the deletions waiting on it.
CREATE INDEX deletion_outcomes_withheld ON deletion_outcomes (recording_id) WHERE outcome = 'withheld_legal_hold';

-- GDPR Art. 18: a restricted recording is kept, but only the privacy and legal roles may open it.
ALTER TABLE recordings ADD COLUMN restricted boolean NOT NULL DEFAULT false;

-- GDPR Art. 15/20: a subject's recordings as a ZIP behind a short-lived link.
CREATE TABLE access_requests (
    id                    uuid        PRIMARY KEY,
    tenant                text        NOT NULL,
    subject_kind          text        NOT NULL CHECK (subject_kind IN ('phone', 'call_id', 'recording_ids')),
    subject_phone_hash    bytea,
    subject_call_id       text,
    subject_recording_ids uuid[],
    recording_ids         uuid[]      NOT NULL,
    token_hash            bytea       NOT NULL UNIQUE,
    created_by            text        NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    expires_at            timestamptz NOT NULL,
    downloaded_at         timestamptz
);
