-- Idempotency keys are unique per workflow, but most runs have none: a
-- partial index spares every keyless run two index entries (at creation
-- and at each write that moves the row), and still serves every lookup by
-- key, which names the key.
DROP INDEX runs_idempotency;
CREATE UNIQUE INDEX runs_idempotency ON runs (workflow, idempotency_key) WHERE idempotency_key IS NOT NULL;
