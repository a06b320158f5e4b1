-- 0001 init (Postgres): tenants, API keys, console users and sessions, the change feed.
-- Times are BIGINT milliseconds since the Unix epoch (UTC); ids are prefixed TEXT.
-- Keep the logical schema identical to migrations/sqlite/0001_init.sql.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY NOT NULL,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    name          TEXT NOT NULL DEFAULT '',
    scope         TEXT NOT NULL CHECK (scope IN ('proxy', 'admin')),
    key_hash      TEXT NOT NULL UNIQUE,
    prefix        TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    revoked_at    BIGINT,
    last_used_at  BIGINT
);
CREATE INDEX api_keys_tenant_id ON api_keys (tenant_id);

CREATE TABLE users (
    id             TEXT PRIMARY KEY NOT NULL,
    email          TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('operator', 'owner', 'admin', 'viewer')),
    tenant_id      TEXT REFERENCES tenants (id),
    created_at     BIGINT NOT NULL
);
CREATE INDEX users_tenant_id ON users (tenant_id);

CREATE TABLE sessions (
    id          TEXT PRIMARY KEY NOT NULL,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX sessions_expires_at ON sessions (expires_at);
CREATE INDEX sessions_user_id ON sessions (user_id);

-- Change feed: other processes sharing this database poll it to invalidate their caches.
-- Writers serialise on an advisory lock before inserting, so seq commits in order.
CREATE TABLE changes (
    seq     BIGSERIAL PRIMARY KEY,
    topic   TEXT NOT NULL,
    ref_id  TEXT NOT NULL,
    at      BIGINT NOT NULL
);
