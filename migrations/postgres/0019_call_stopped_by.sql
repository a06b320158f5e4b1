-- 0019: calls by the guardrail that stopped them, and calls by an unusual status. Keep the
-- logical schema identical to migrations/sqlite/0019_call_stopped_by.sql (the reasons are there); the
-- expressions must stay word for word those of `store::search_sql::STOPPED_BY`.
CREATE INDEX calls_tenant_stopped_by ON calls (
    tenant_id,
    (COALESCE(blocked_by, decisions::json -> -1 ->> 'policy')),
    created_at,
    id
) WHERE blocked_by IS NOT NULL OR (decisions::json -> -1 ->> 'outcome') <> 'pass';

-- The calls that did not answer 200, by status: a search for a rare or absent status
-- (status:418, status:5xx) reads them only, where it walked every call. Only such calls
-- are written to it, so the calls of a healthy upstream cost it nothing.
CREATE INDEX calls_tenant_status_unusual ON calls (tenant_id, status, created_at, id)
    WHERE status <> 200;
