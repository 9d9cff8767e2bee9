-- Approver groups set over the API (groups in steward.toml are not stored).
CREATE TABLE approver_groups (
    name TEXT PRIMARY KEY,
    -- a JSON array of names
    members TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
