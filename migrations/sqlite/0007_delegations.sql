-- An approver away hands their approvals to a delegate for a period; a
-- decision by the delegate counts as theirs and names the delegate.
CREATE TABLE delegations (
    id TEXT PRIMARY KEY,
    from_name TEXT NOT NULL,
    to_name TEXT NOT NULL,
    starts_at BIGINT NOT NULL,
    ends_at BIGINT,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX delegations_to ON delegations (to_name);

ALTER TABLE approval_decisions ADD COLUMN delegate TEXT;
