-- 0002 calls (Postgres): recorded calls, kill-switch events, per-tenant policy overrides.
-- Keep the logical schema identical to migrations/sqlite/0002_calls.sql.
-- JSON (metadata, decisions, overrides) is stored as TEXT, not jsonb: it is read back
-- byte for byte, costs no parsing on the hot insert path, and a "\u0000" escape (which
-- jsonb refuses) cannot make a whole group commit fail.

-- One row per call through the front door, written once by the recorder's group commit
-- and never updated. Indexes are only those the console's queries need: every extra one
-- is paid on each of thousands of inserts per second. Ids use the "C" collation so that
-- they sort by bytes, as on SQLite (pages are ordered by created_at, then id).
CREATE TABLE calls (
    id                   TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    tenant_id            TEXT NOT NULL REFERENCES tenants (id),
    key_id               TEXT NOT NULL,
    created_at           BIGINT NOT NULL,
    endpoint             TEXT NOT NULL,
    model                TEXT,
    stream               BOOLEAN NOT NULL,
    end_user             TEXT,
    session_id           TEXT,
    metadata             TEXT,
    request_body         TEXT NOT NULL,
    request_truncated    BOOLEAN NOT NULL,
    request_sha256       TEXT NOT NULL,
    response_body        TEXT,
    response_truncated   BOOLEAN NOT NULL,
    response_sha256      TEXT,
    status               INTEGER NOT NULL,
    error                TEXT,
    blocked              BOOLEAN NOT NULL,
    blocked_by           TEXT,
    decisions            TEXT NOT NULL,
    prompt_tokens        BIGINT,
    completion_tokens    BIGINT,
    cached_tokens        BIGINT,
    total_tokens         BIGINT,
    -- Nano-dollars; NULL means the price was unknown (never recorded as 0).
    cost_nanos           BIGINT,
    latency_us           BIGINT NOT NULL,
    upstream_latency_us  BIGINT,
    enforcement_us       BIGINT NOT NULL,
    upstream_attempts    INTEGER NOT NULL,
    upstream             TEXT
);
-- Each filter index ends in the page order (created_at DESC, id DESC), so a filtered
-- page is one range scan of one index with no sort, also after a cursor.
CREATE INDEX calls_tenant_created ON calls (tenant_id, created_at DESC, id DESC);
CREATE INDEX calls_tenant_end_user ON calls (tenant_id, end_user, created_at DESC, id DESC);
CREATE INDEX calls_tenant_session ON calls (tenant_id, session_id, created_at DESC, id DESC);
CREATE INDEX calls_tenant_key ON calls (tenant_id, key_id, created_at DESC, id DESC);

-- Kill-switch history. A target is a tenant (key_id NULL) or one key of it; its state is
-- its latest event by (at, seq). seq is the insertion order, so two events in the same
-- millisecond resolve to the one written last (writers hold the change-feed advisory
-- lock, so seq order is also commit order).
CREATE TABLE freeze_events (
    id         TEXT PRIMARY KEY NOT NULL,
    seq        BIGSERIAL NOT NULL UNIQUE,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    key_id     TEXT,
    action     TEXT NOT NULL CHECK (action IN ('freeze', 'unfreeze')),
    actor      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    at         BIGINT NOT NULL
);
CREATE INDEX freeze_events_target_latest ON freeze_events (tenant_id, key_id, at DESC, seq DESC);

-- A tenant's guardrail overrides: only the fields it changed, as a JSON object.
CREATE TABLE tenant_policies (
    tenant_id   TEXT PRIMARY KEY NOT NULL REFERENCES tenants (id),
    overrides   TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);
