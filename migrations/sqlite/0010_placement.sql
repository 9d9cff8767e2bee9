-- Where a run may execute: the worker tags its workflow requires (sorted,
-- comma-separated, empty for any worker) and the workflow's concurrency
-- limit (NULL for none), copied from the workflow version at creation.
ALTER TABLE runs ADD COLUMN required_tags TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN concurrency_limit INTEGER;
