-- A rerun's link to the run it repeats (POST /v1/runs/{id}/rerun); NULL for
-- runs started any other way.
ALTER TABLE runs ADD COLUMN rerun_of TEXT;
