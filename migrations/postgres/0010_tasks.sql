-- 0010 tasks: long evidence work run in the background (replay of every call of an
-- incident, large exports), with its progress and its result. Keep the logical schema
-- identical on both backends; src/store/tasks.rs serves both.
-- `output` is the produced file, base64 (exports); `result` a JSON summary.
CREATE TABLE tasks (
    id            TEXT PRIMARY KEY NOT NULL,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    kind          TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    params        TEXT NOT NULL,
    progress_done BIGINT NOT NULL,
    progress_total BIGINT NOT NULL,
    result        TEXT,
    error         TEXT,
    content_type  TEXT,
    filename      TEXT,
    output        TEXT
);
CREATE INDEX tasks_tenant ON tasks (tenant_id, created_at);
