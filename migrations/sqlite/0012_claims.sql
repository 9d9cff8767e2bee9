-- Due runs a claim may take, in the order it takes them, per set of
-- required tags: the claim reads the first few entries whatever the
-- table's statistics say (without them, on a fresh PostgreSQL table, the
-- planner read and sorted every due run to take 64).
CREATE INDEX runs_claimable ON runs (required_tags, wake_at) WHERE wake_at IS NOT NULL AND concurrency_limit IS NULL;
-- Due runs of workflows with a concurrency limit: most workflows have
-- none, so a claim learns that from this (usually empty) index instead of
-- reading every due run.
CREATE INDEX runs_due_limited ON runs (wake_at) WHERE concurrency_limit IS NOT NULL AND wake_at IS NOT NULL;
-- Every query of due runs has one of these two indexes now: one index
-- fewer to update per write.
DROP INDEX runs_due;
