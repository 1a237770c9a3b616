-- 0008: an intent row for every object put, so that an object whose reference never committed
-- (the process died between the put and the commit, or the commit failed and the discard did
-- too) is found without listing the bucket. Written in its own committed transaction before
-- the put; removed in the transaction that commits the object's reference (a recording row or
-- a job payload), or when the writer discards the object. What is left older than
-- [storage] orphan_grace is the orphan collector's (callrec.storage.orphans).
CREATE TABLE object_intents (
    object_key        text        PRIMARY KEY,
    tenant            text        NOT NULL,
    -- Who put it: "webhook:upload" or "job:<id>"; for the operator reading the collector's log.
    created_by        text        NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- Set when a collector has claimed the intent: from then on no writer may commit a reference
    -- to the object (removing the intent, which a commit must do, finds nothing and fails).
    collecting_since  timestamptz
);
-- The collector takes the oldest intents first.
CREATE INDEX object_intents_age ON object_intents (created_at);
-- The collector's reference checks: a key named by a recording, or by a job still to run, is
-- never an orphan. Partial indexes: tombstones have no key, and done jobs no longer count.
CREATE INDEX recordings_object_key ON recordings (object_key) WHERE object_key IS NOT NULL;
CREATE INDEX jobs_live_object_key ON jobs ((payload->>'object_key')) WHERE state IN ('queued', 'running');
