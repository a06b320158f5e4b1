-- 0012 call retention and chain v2 (see src/domain/chain.rs, src/store/retention.rs and
-- src/ops/retention.rs). Keep the logical schema identical to
-- migrations/postgres/0012_call_retention.sql.

-- Which link formula a call's chain_hash uses. 1: the link covers the bodies themselves
-- (every call chained before 0012, and the default for them: adding a column with a
-- constant default rewrites no row). 2: the link covers the SHA-256 of each stored body
-- instead, so retention can later remove a body and the chain still verifies. The
-- recorder writes 2 for every new call.
ALTER TABLE calls ADD COLUMN chain_version BIGINT NOT NULL DEFAULT 1;

-- SHA-256 (hex) of each body exactly as stored (after truncation, redaction and U+0000
-- replacement; request_sha256 / response_sha256 name the content as sent, which may
-- differ). Set on chain v2 calls; NULL on older calls and where no response body was
-- stored. A v2 link covers these instead of the bodies.
ALTER TABLE calls ADD COLUMN request_body_sha256 TEXT;
ALTER TABLE calls ADD COLUMN response_body_sha256 TEXT;

-- When retention removed the call's bodies (request_body '' and response_body '' or
-- NULL); NULL while they are kept. Not chained: removing a body is allowed, changing one
-- is not (the digests above still say what it was).
ALTER TABLE calls ADD COLUMN body_pruned_at BIGINT;

-- The retention sweep walks the v2 calls that still have bodies, oldest first. Partial:
-- a call leaves the index when its bodies are removed, so a sweep never rereads them.
CREATE INDEX calls_bodies_kept ON calls (created_at, id)
    WHERE body_pruned_at IS NULL AND chain_version = 2;
