-- 0015: the calls' filter indexes in ascending order. Keep the logical schema identical to
-- migrations/sqlite/0015_ascending_call_indexes.sql (the reasons are there).
DROP INDEX calls_tenant_created;
DROP INDEX calls_tenant_end_user;
DROP INDEX calls_tenant_session;
DROP INDEX calls_tenant_key;
CREATE INDEX calls_tenant_created ON calls (tenant_id, created_at, id);
CREATE INDEX calls_tenant_end_user ON calls (tenant_id, end_user, created_at, id)
    WHERE end_user IS NOT NULL;
CREATE INDEX calls_tenant_session ON calls (tenant_id, session_id, created_at, id)
    WHERE session_id IS NOT NULL;
CREATE INDEX calls_tenant_key ON calls (tenant_id, key_id, created_at, id);
