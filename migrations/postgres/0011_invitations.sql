-- 0011 invitations: an owner (or the operator) invites one person to a tenant. Only the
-- SHA-256 of the token is kept; the token travels in the invitation URL. Keep the logical
-- schema identical on both backends; src/store/console.rs serves both.
CREATE TABLE invitations (
    id           TEXT PRIMARY KEY NOT NULL,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    email        TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'viewer')),
    token_hash   TEXT NOT NULL UNIQUE,
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    accepted_at  BIGINT
);
CREATE INDEX invitations_tenant ON invitations (tenant_id, created_at);
