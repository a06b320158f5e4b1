-- 0004: the end-user and session indexes cover only the calls that have one.
-- Many integrations send neither; such calls now write two index pages fewer on every
-- commit of the recorder (the proxy's hot path), and a filter on an end user or a
-- session (`end_user = ?` implies `end_user IS NOT NULL`) still uses its index.
DROP INDEX calls_tenant_end_user;
DROP INDEX calls_tenant_session;
CREATE INDEX calls_tenant_end_user ON calls (tenant_id, end_user, created_at DESC, id DESC)
    WHERE end_user IS NOT NULL;
CREATE INDEX calls_tenant_session ON calls (tenant_id, session_id, created_at DESC, id DESC)
    WHERE session_id IS NOT NULL;
