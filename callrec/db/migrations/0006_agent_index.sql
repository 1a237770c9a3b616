-- 0006: the supervisors' agent filter and its list of agents read an index, not the whole table.
CREATE INDEX recordings_agent ON recordings (tenant, agent, stored_at DESC) WHERE agent IS NOT NULL;
