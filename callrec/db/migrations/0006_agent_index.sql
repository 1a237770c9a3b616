-- 0006: the supervisors' agent filter and its list of agents read an index, not the whole table.
-- Live recordings only: a tombstone keeps its agent, but nobody can open it from the portal.
CREATE INDEX recordings_agent ON recordings (tenant, agent, stored_at DESC)
    WHERE agent IS NOT NULL AND state IN ('stored', 'quarantined');
