-- Runs, their event history, deployed workflow versions and plugin key-value data.
-- Times are Unix milliseconds, JSON is stored as text.
CREATE TABLE workflow_versions (
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    source TEXT NOT NULL,
    deployed_at BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    version BIGINT NOT NULL,
    status TEXT NOT NULL,
    input TEXT NOT NULL,
    output TEXT,
    error TEXT,
    idempotency_key TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT,
    -- when the run next needs a worker; NULL once it is finished
    wake_at BIGINT,
    lease_owner TEXT,
    lease_until BIGINT
);
CREATE UNIQUE INDEX runs_idempotency ON runs (workflow, idempotency_key);
CREATE INDEX runs_due ON runs (wake_at) WHERE wake_at IS NOT NULL;
CREATE INDEX runs_list ON runs (workflow, status, id);

CREATE TABLE run_events (
    run_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE plugin_kv (
    plugin TEXT NOT NULL,
    key TEXT NOT NULL,
    value BYTEA NOT NULL,
    PRIMARY KEY (plugin, key)
);
