-- Who changed what: one row per audited change, written in the change's own
-- transaction so a change without its row (or a row without its change)
-- cannot exist. Rows are never updated or deleted; `id` is a UUIDv7, so it
-- sorts by time and pages like the runs listing.
CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_action ON audit_log (action, id);
