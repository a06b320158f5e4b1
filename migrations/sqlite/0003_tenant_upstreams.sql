-- 0003 tenant upstreams (sqlite): a tenant's own OpenAI-compatible upstream.
-- Keep the logical schema identical to the other backend's 0003_tenant_upstreams.sql.
-- The provider key is never stored in clear: api_key_ciphertext is base64(nonce || ciphertext)
-- of ChaCha20-Poly1305 under the master key, with the tenant id as associated data.
CREATE TABLE tenant_upstreams (
    tenant_id           TEXT PRIMARY KEY NOT NULL REFERENCES tenants (id),
    base_url            TEXT NOT NULL,
    api_key_ciphertext  TEXT,
    updated_at          BIGINT NOT NULL
);
