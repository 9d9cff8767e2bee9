-- A finished run's SLA outcome, for /v1/reports/sla (the history holds the
-- details; these columns make the report a scan of one index range).
ALTER TABLE runs ADD COLUMN sla_priority TEXT;
ALTER TABLE runs ADD COLUMN sla_target_ms BIGINT;
ALTER TABLE runs ADD COLUMN sla_breached BIGINT;
CREATE INDEX runs_sla_finished ON runs (finished_at) WHERE sla_priority IS NOT NULL;
