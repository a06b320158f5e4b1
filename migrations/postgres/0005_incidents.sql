-- 0005 incidents: what went wrong, grouped (see src/domain/incident.rs).
-- Integer columns are BIGINT here (SQLite: INTEGER, the same 64-bit storage).
-- Keep the logical schema identical on both backends. Flags are INTEGER 0/1 on both, so
-- that one set of statements (src/store/incidents.rs) serves SQLite and Postgres.

CREATE TABLE incidents (
    id                TEXT PRIMARY KEY NOT NULL,
    tenant_id         TEXT NOT NULL REFERENCES tenants (id),
    fingerprint       TEXT NOT NULL,
    grouping_version  BIGINT NOT NULL,
    rule              TEXT NOT NULL,
    subject           TEXT NOT NULL,
    title             TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('open', 'acknowledged', 'resolved')),
    severity          TEXT NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    assignee          TEXT,
    overflow          BIGINT NOT NULL CHECK (overflow IN (0, 1)),
    demo              BIGINT NOT NULL CHECK (demo IN (0, 1)),
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    first_signal_at   BIGINT NOT NULL,
    last_signal_at    BIGINT NOT NULL,
    acknowledged_at   BIGINT,
    resolved_at       BIGINT,
    signal_count      BIGINT NOT NULL,
    call_count        BIGINT NOT NULL,
    end_user_count    BIGINT NOT NULL,
    cost_nanos        BIGINT NOT NULL
);
CREATE INDEX incidents_tenant_created ON incidents (tenant_id, created_at DESC, id DESC);
CREATE INDEX incidents_fingerprint ON incidents (tenant_id, fingerprint, created_at DESC);
CREATE INDEX incidents_tenant_status ON incidents (tenant_id, status, created_at DESC, id DESC);

-- The signals that made each incident; never moved to another incident.
CREATE TABLE incident_signals (
    incident_id  TEXT NOT NULL REFERENCES incidents (id),
    tenant_id    TEXT NOT NULL,
    rule         TEXT NOT NULL,
    at           BIGINT NOT NULL,
    call_id      TEXT,
    end_user     TEXT,
    cost_nanos   BIGINT,
    detail       TEXT NOT NULL
);
CREATE INDEX incident_signals_incident ON incident_signals (incident_id, at);
CREATE INDEX incident_signals_user ON incident_signals (tenant_id, end_user, incident_id)
    WHERE end_user IS NOT NULL;
CREATE INDEX incident_signals_call ON incident_signals (call_id) WHERE call_id IS NOT NULL;

-- The history of each incident: who did what, when, before and after.
CREATE TABLE incident_events (
    id           TEXT PRIMARY KEY NOT NULL,
    seq          BIGINT GENERATED ALWAYS AS IDENTITY,
    incident_id  TEXT NOT NULL REFERENCES incidents (id),
    tenant_id    TEXT NOT NULL,
    at           BIGINT NOT NULL,
    actor        TEXT NOT NULL,
    kind         TEXT NOT NULL,
    before       TEXT,
    after        TEXT,
    note         TEXT
);
CREATE INDEX incident_events_incident ON incident_events (incident_id, at, seq);

-- Tenants made by `agv-server demo`: only these accept simulated incidents.
CREATE TABLE demo_tenants (
    tenant_id   TEXT PRIMARY KEY NOT NULL REFERENCES tenants (id),
    created_at  BIGINT NOT NULL
);
