-- Approval steps waiting for people. A row per approval (an escalation is a
-- new approval), who may decide it, and the decisions as they arrive. The
-- run's history holds the audit trail; these tables are what the API reads
-- and writes without touching a run another process may be driving.
CREATE TABLE approvals (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    workflow TEXT NOT NULL,
    step TEXT NOT NULL,
    level BIGINT NOT NULL,
    approvers TEXT NOT NULL,
    eligible TEXT NOT NULL,
    quorum BIGINT NOT NULL,
    due_at BIGINT,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    closed_at BIGINT
);
CREATE INDEX approvals_run ON approvals (run_id);
CREATE INDEX approvals_closed ON approvals (closed_at) WHERE closed_at IS NOT NULL;

CREATE TABLE approval_approvers (
    approval_id TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (name, approval_id)
);

CREATE TABLE approval_decisions (
    approval_id TEXT NOT NULL,
    decided_by TEXT NOT NULL,
    decision TEXT NOT NULL,
    comment TEXT,
    decided_at BIGINT NOT NULL,
    PRIMARY KEY (approval_id, decided_by)
);

-- Set when something outside the run's worker (a decision) needs it to look
-- again; a worker parking the run keeps it due until it has looked.
ALTER TABLE runs ADD COLUMN attention BIGINT NOT NULL DEFAULT 0;
