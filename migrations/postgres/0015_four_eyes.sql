-- Four eyes: who started a run (a token's subject, `hook:NAME`,
-- `schedule:ID`), so nobody approves what they asked for. NULL for runs
-- started before this was recorded.
ALTER TABLE runs ADD COLUMN started_by TEXT;
-- The approval's requester (its `requester:` expression, evaluated when it
-- opened) and whether the step allows the starter or requester to decide.
ALTER TABLE approvals ADD COLUMN requester TEXT;
ALTER TABLE approvals ADD COLUMN allow_self_approval BIGINT NOT NULL DEFAULT 0;
