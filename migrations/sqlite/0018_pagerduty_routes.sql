-- 0018 PagerDuty routes: an alert route may also be a PagerDuty Events API v2 integration
-- (its routing key is the sealed secret). SQLite cannot change a CHECK constraint in place,
-- so the table is copied into one that allows the new kind. Keep the logical schema
-- identical to the other backend's 0018_pagerduty_routes.sql; src/store/alerts.rs serves both.
CREATE TABLE alert_routes_0018 (
    id                  TEXT PRIMARY KEY NOT NULL,
    tenant_id           TEXT NOT NULL REFERENCES tenants (id),
    name                TEXT NOT NULL,
    kind                TEXT NOT NULL CHECK (kind IN ('slack', 'webhook', 'pagerduty')),
    target              TEXT NOT NULL,
    url_ciphertext      TEXT NOT NULL,
    secret_ciphertext   TEXT,
    min_severity        TEXT NOT NULL CHECK (min_severity IN ('low', 'medium', 'high', 'critical')),
    group_wait_ms       BIGINT NOT NULL,
    repeat_interval_ms  BIGINT NOT NULL,
    created_at          BIGINT NOT NULL
);
INSERT INTO alert_routes_0018 (id, tenant_id, name, kind, target, url_ciphertext,
    secret_ciphertext, min_severity, group_wait_ms, repeat_interval_ms, created_at)
SELECT id, tenant_id, name, kind, target, url_ciphertext, secret_ciphertext, min_severity,
    group_wait_ms, repeat_interval_ms, created_at
FROM alert_routes;
DROP TABLE alert_routes;
ALTER TABLE alert_routes_0018 RENAME TO alert_routes;
CREATE INDEX alert_routes_tenant ON alert_routes (tenant_id, created_at, id);
