-- 0007 alerts: tenants' alert routes and the log of alerts sent (see src/domain/alert.rs).
-- Keep the logical schema identical on both backends; src/store/alerts.rs serves both.

-- The URL (a Slack webhook URL is a credential) and the signing secret are stored only
-- as ciphertext sealed with the master key; `target` is the URL with its path hidden.
CREATE TABLE alert_routes (
    id                  TEXT PRIMARY KEY NOT NULL,
    tenant_id           TEXT NOT NULL REFERENCES tenants (id),
    name                TEXT NOT NULL,
    kind                TEXT NOT NULL CHECK (kind IN ('slack', 'webhook')),
    target              TEXT NOT NULL,
    url_ciphertext      TEXT NOT NULL,
    secret_ciphertext   TEXT,
    min_severity        TEXT NOT NULL CHECK (min_severity IN ('low', 'medium', 'high', 'critical')),
    group_wait_ms       BIGINT NOT NULL,
    repeat_interval_ms  BIGINT NOT NULL,
    created_at          BIGINT NOT NULL
);
CREATE INDEX alert_routes_tenant ON alert_routes (tenant_id, created_at, id);

-- Every alert that reached its receiver. Kept when its route is deleted.
CREATE TABLE alert_deliveries (
    route_id     TEXT NOT NULL,
    tenant_id    TEXT NOT NULL,
    incident_id  TEXT,
    reason       TEXT NOT NULL,
    severity     TEXT,
    attempt      BIGINT NOT NULL,
    job_id       TEXT NOT NULL,
    status       BIGINT NOT NULL,
    at           BIGINT NOT NULL
);
CREATE INDEX alert_deliveries_incident ON alert_deliveries (incident_id, route_id, at)
    WHERE incident_id IS NOT NULL;
