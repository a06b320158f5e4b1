-- 0019: calls by the guardrail that stopped them, and calls by an unusual status, for searches.
-- A call is a policy's when that policy stopped it (blocked_by) or when its last decision
-- is that policy's and not a pass (a throttle, or dg-001's after-the-fact cost check on a
-- call already served). Finding them used to parse every call's decisions: a policy with
-- few or no calls walked the whole history. The index holds only such calls, keyed by
-- that policy, so a search for one reads its calls and nothing else.
-- The expressions must stay word for word those of `store::search_sql::STOPPED_BY`.
CREATE INDEX calls_tenant_stopped_by ON calls (
    tenant_id,
    COALESCE(blocked_by, json_extract(decisions, '$[#-1].policy')),
    created_at,
    id
) WHERE blocked_by IS NOT NULL OR json_extract(decisions, '$[#-1].outcome') <> 'pass';

-- The calls that did not answer 200, by status: a search for a rare or absent status
-- (status:418, status:5xx) reads them only, where it walked every call. Only such calls
-- are written to it, so the calls of a healthy upstream cost it nothing.
CREATE INDEX calls_tenant_status_unusual ON calls (tenant_id, status, created_at, id)
    WHERE status <> 200;
