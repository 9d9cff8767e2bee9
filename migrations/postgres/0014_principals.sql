-- Principals: a token belongs to a subject (a person such as `max`, or a
-- service such as `svc:servicenow`), may expire, and records roughly when
-- it was last used (at most once a minute per token and process).
-- Tokens made before subjects existed become the service named after them.
ALTER TABLE api_tokens ADD COLUMN subject TEXT;
ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT;
ALTER TABLE api_tokens ADD COLUMN last_used_at BIGINT;
UPDATE api_tokens SET subject = 'svc:' || name WHERE subject IS NULL;
-- A decision an admin entered on behalf of the approver in decided_by.
ALTER TABLE approval_decisions ADD COLUMN entered_by TEXT;
