-- 0021: calls by model, for searches. Keep the logical schema identical to
-- migrations/sqlite/0021_call_model.sql (the reasons are there).
CREATE INDEX calls_tenant_model ON calls (tenant_id, model, created_at, id);
