-- 0014 shared quotas: when several instances share one database, the rate limits and
-- budgets of dg-003 hold across all of them. Each row is one allowance (a key's or a
-- tenant's requests or tokens per minute, a tenant's budget of one day or month): what is
-- left of it (`level`, in units of the allowance), its limit (`cap`) and how fast it
-- refills. Instances lease slices of it under a row lock and give back what they did not
-- use (src/store/quota.rs, src/guard/shared.rs). Coordination state, not data: never
-- backed up. SQLite (one instance) has the table but its guard never leases.
-- Keep the logical schema identical on both backends.
CREATE TABLE shared_quotas (
    name        TEXT PRIMARY KEY,
    cap         BIGINT NOT NULL,
    level       BIGINT NOT NULL,
    per_minute  BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL
);
CREATE INDEX shared_quotas_expires ON shared_quotas (expires_ms);
