-- 0002: consent and announcement evidence, the policy decision, quarantine and tombstones.

-- A recording row now also stands for a recording that was refused (state 'rejected') or
-- destroyed later ('destroyed'): its audio, key and phone numbers are gone and only the
-- tombstone fields remain (ids, dates, reason).
ALTER TABLE recordings DROP CONSTRAINT recordings_state_check;
ALTER TABLE recordings ADD CONSTRAINT recordings_state_check
    CHECK (state IN ('stored', 'quarantined', 'rejected', 'destroyed'));
ALTER TABLE recordings
    ADD COLUMN jurisdiction  jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN policy        jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN redactions    jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN destroyed_at  timestamptz,
    ADD COLUMN destroy_reason text;
-- Duration and format are unknown for a recording refused before its audio was read.
ALTER TABLE recordings ALTER COLUMN duration_ms DROP NOT NULL,
                       ALTER COLUMN channels DROP NOT NULL,
                       ALTER COLUMN sample_rate DROP NOT NULL,
                       ALTER COLUMN format DROP NOT NULL,
                       ALTER COLUMN codec DROP NOT NULL,
                       ALTER COLUMN size_bytes DROP NOT NULL,
                       ALTER COLUMN sha256 DROP NOT NULL;
-- Quarantine review lists only quarantined rows.
CREATE INDEX recordings_quarantine ON recordings (tenant, stored_at) WHERE state = 'quarantined';

-- Signed call events from the telephony system, correlated to recordings by call_id. They may
-- arrive before or after the recording, so they are kept on their own and read at decision time.
CREATE TABLE call_events (
    id           bigserial   PRIMARY KEY,
    tenant       text        NOT NULL,
    call_id      text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN (
                     'announcement_played', 'consent_granted', 'consent_declined', 'consent_withdrawn',
                     'recording_paused', 'recording_resumed')),
    at           timestamptz NOT NULL,
    details      jsonb       NOT NULL DEFAULT '{}',
    received_at  timestamptz NOT NULL DEFAULT now(),
    -- The same event sent twice (a retry) is one event.
    UNIQUE (tenant, call_id, kind, at)
);
CREATE INDEX call_events_call ON call_events (tenant, call_id, at);

-- Announcement prompts registered with `callrec announcements add` (config-file prompts are read
-- from their files). Prompt audio is the company's own recording, not personal data.
CREATE TABLE announcements (
    tenant       text        NOT NULL,
    id           text        NOT NULL,
    version      text        NOT NULL,
    language     text        NOT NULL,
    audio        bytea       NOT NULL,
    sha256       text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, id, version)
);

-- A job waiting for late consent events is deferred without spending an attempt.
ALTER TABLE jobs ADD COLUMN deferrals integer NOT NULL DEFAULT 0;
