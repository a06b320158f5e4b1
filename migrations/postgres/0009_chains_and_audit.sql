-- 0009 tamper evidence and the audit log (see src/domain/chain.rs and src/store/chain.rs).
-- Keep the logical schema identical to migrations/sqlite/0009_chains_and_audit.sql.
-- Hashes are lowercase hex SHA-256.

-- Each call's link in its tenant's chain: chain_hash = SHA-256(previous chain_hash ||
-- chain_seq || canonical bytes of the stored row). NULL on calls recorded before 0009.
ALTER TABLE calls ADD COLUMN chain_seq BIGINT;
ALTER TABLE calls ADD COLUMN chain_hash TEXT;
-- One link per position: two writers can never both append seq n (the chain cannot fork).
CREATE UNIQUE INDEX calls_chain ON calls (tenant_id, chain_seq) WHERE chain_seq IS NOT NULL;

-- The head (last link) of every chain: 'calls/<tenant>', 'audit/<tenant>' and 'audit/'
-- for operator actions without a tenant. Updated in the transaction that appends.
CREATE TABLE chain_heads (
    chain  TEXT PRIMARY KEY NOT NULL,
    seq    BIGINT NOT NULL,
    hash   TEXT NOT NULL
);

-- Who did what, when, from where, with the state before and after (JSON text). Written
-- once, never updated; chained per tenant (tenant_id NULL: the instance-wide chain).
CREATE TABLE audit_entries (
    id           TEXT PRIMARY KEY NOT NULL,
    chain        TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    tenant_id    TEXT,
    actor_kind   TEXT NOT NULL,
    actor_id     TEXT NOT NULL,
    action       TEXT NOT NULL,
    target       TEXT NOT NULL,
    source       TEXT,
    at           BIGINT NOT NULL,
    before_json  TEXT,
    after_json   TEXT,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL,
    UNIQUE (chain, seq)
);
