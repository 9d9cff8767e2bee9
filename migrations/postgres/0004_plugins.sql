-- Plugins uploaded through the API (PUT /v1/plugins/{name}): kept here so
-- every process and every restart serves them.
CREATE TABLE uploaded_plugins (
    name TEXT PRIMARY KEY,
    manifest TEXT NOT NULL,
    component BYTEA NOT NULL,
    digest TEXT NOT NULL,
    uploaded_at BIGINT NOT NULL
);
