-- Signals: outside events that `wait_for` steps wait on. A delivery is
-- addressed to one run (run_id) or, keyed, to every run waiting with its
-- key; it is kept until taken, and taken at most once per run (the primary
-- key of signal_consumptions) by at most one step (unique run and step).
CREATE TABLE signal_deliveries (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    signal_key TEXT,
    run_id TEXT,
    payload TEXT NOT NULL,
    idempotency_key TEXT,
    received_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX signal_deliveries_idempotency ON signal_deliveries (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX signal_deliveries_keyed ON signal_deliveries (name, signal_key, received_at)
    WHERE run_id IS NULL;
CREATE INDEX signal_deliveries_run ON signal_deliveries (run_id, name)
    WHERE run_id IS NOT NULL;

CREATE TABLE signal_consumptions (
    delivery_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    consumed_at BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, run_id)
);
CREATE UNIQUE INDEX signal_consumptions_step ON signal_consumptions (run_id, step);

-- The open wait_for steps, written when a wait opens and removed when it
-- takes a delivery: a keyed delivery wakes the runs listed here.
CREATE TABLE signal_waits (
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    name TEXT NOT NULL,
    signal_key TEXT,
    opened_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE INDEX signal_waits_key ON signal_waits (name, signal_key);
