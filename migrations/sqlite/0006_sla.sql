-- A finished run's SLA outcome, for /v1/reports/sla (the history holds the
-- details). The first index serves the report's counts (grouped in index
-- order, the time range checked inside it); the second its quantiles (the
-- Nth fastest resolution of a group is an index walk, not a sort).
ALTER TABLE runs ADD COLUMN sla_priority TEXT;
ALTER TABLE runs ADD COLUMN sla_target_ms BIGINT;
ALTER TABLE runs ADD COLUMN sla_breached BIGINT;
ALTER TABLE runs ADD COLUMN sla_resolution_ms BIGINT;
CREATE INDEX runs_sla_groups ON runs (workflow, sla_priority, finished_at, status, sla_breached)
    WHERE sla_priority IS NOT NULL AND sla_target_ms IS NOT NULL;
CREATE INDEX runs_sla_resolution ON runs (workflow, sla_priority, sla_resolution_ms, finished_at)
    WHERE sla_resolution_ms IS NOT NULL AND sla_target_ms IS NOT NULL;
