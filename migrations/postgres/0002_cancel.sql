-- A cancel request, with its reason, for the worker driving the run to honour.
ALTER TABLE runs ADD COLUMN cancel_requested TEXT;
