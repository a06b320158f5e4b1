-- 0016 instance upstream (sqlite): the upstream the operator set in the console, which
-- overrides upstream_url / upstream_api_key from the environment or config.toml until it
-- is removed. At most one row (id = 1). Keep the logical schema identical to the other
-- backend's 0016_instance_upstream.sql.
-- The provider key is never stored in clear: api_key_ciphertext is base64(nonce || ciphertext)
-- of ChaCha20-Poly1305 under the master key, with "instance" as associated data.
CREATE TABLE instance_upstream (
    id                  INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    base_url            TEXT NOT NULL,
    api_key_ciphertext  TEXT,
    updated_at          BIGINT NOT NULL
);
