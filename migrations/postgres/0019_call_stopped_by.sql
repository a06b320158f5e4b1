-- 0019: calls by the guardrail that stopped them. Keep the logical schema identical to
-- migrations/sqlite/0019_call_stopped_by.sql (the reasons are there); the expressions
-- must stay word for word those of `store::search_sql::STOPPED_BY`.
CREATE INDEX calls_tenant_stopped_by ON calls (
    tenant_id,
    (COALESCE(blocked_by, decisions::json -> -1 ->> 'policy')),
    created_at,
    id
) WHERE blocked_by IS NOT NULL OR (decisions::json -> -1 ->> 'outcome') <> 'pass';
