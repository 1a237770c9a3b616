-- 0007: the audit chain authenticated with a key the database never holds, and anchored outside it
-- (issue 9, defect 3; callrec.db.audit explains the scheme).

-- Each entry's MAC (HMAC-SHA256 under the audit key key_id) covers its content and the previous MAC.
-- Entries written before this version have neither: the hash chain up to the checkpoint covers them.
ALTER TABLE audit_log ADD COLUMN key_id integer, ADD COLUMN mac bytea;
ALTER TABLE audit_log ADD CONSTRAINT audit_log_mac_has_key CHECK ((key_id IS NULL) = (mac IS NULL));
-- The MAC the next entry chains to: the newest entry's, or the checkpoint's while none follows it.
ALTER TABLE audit_head ADD COLUMN mac bytea;

-- The audit data keys, each wrapped by the deployment's audit key-encryption key (the local keyring
-- or AWS KMS): useless to whoever holds only the database. The newest is the one that signs.
CREATE TABLE audit_keys (
    key_id      integer     PRIMARY KEY CHECK (key_id > 0),
    wrapped     bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The head of the hash chain when the chain was first authenticated (seq 0 on a new database),
-- MACed with the audit key: what came before is covered by the hash chain up to this point.
CREATE TABLE audit_checkpoints (
    seq     bigint      PRIMARY KEY,
    hash    bytea       NOT NULL,
    at      timestamptz NOT NULL,
    key_id  integer     NOT NULL,
    mac     bytea       NOT NULL
);
CREATE FUNCTION audit_checkpoints_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_checkpoints is append-only (% refused)', TG_OP;
END;
$$;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_checkpoints_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_checkpoints_append_only();

-- Once the chain is authenticated, an entry without a MAC is refused: a process of an older callrec
-- left running through the upgrade fails its write instead of breaking the chain.
CREATE FUNCTION audit_log_needs_mac() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.mac IS NULL AND EXISTS (SELECT 1 FROM audit_checkpoints) THEN
        RAISE EXCEPTION 'audit_log: entries need a MAC since the checkpoint (is an older callrec still running?)';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER audit_log_needs_mac BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_needs_mac();

-- The newest anchor written outside the database, as written (MAC included, so that a forged row
-- is seen): the anchoring schedule, the auditor's page and the metrics read it. The anchors
-- themselves, in the anchor store, are the evidence; this row is only a convenience.
CREATE TABLE audit_anchor_last (
    id        boolean     PRIMARY KEY DEFAULT true CHECK (id),
    at        timestamptz NOT NULL,
    seq       bigint      NOT NULL,
    head_mac  bytea       NOT NULL,
    key_id    integer     NOT NULL,
    mac       bytea       NOT NULL,
    location  text        NOT NULL
);
