-- Runs not yet finished, by status: the queue depth /metrics reports is
-- read here, at the cost of the open runs, not of the whole history.
CREATE INDEX runs_open ON runs (status) WHERE status IN ('pending', 'running', 'waiting');
