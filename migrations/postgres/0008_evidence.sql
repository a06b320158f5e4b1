-- 0008 evidence: replays and signed certificates (see src/domain/replay.rs and
-- src/domain/certificate.rs). Integer columns are BIGINT on both backends; keep the logical
-- schema identical, src/store/evidence.rs serves both.

-- One replay of a recorded call. An upstream replay also made a new call, linked here
-- (`replay_call_id` is the new call, `call_id` the call it is a replay of).
CREATE TABLE replays (
    id              TEXT PRIMARY KEY NOT NULL,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id),
    call_id         TEXT NOT NULL,
    replay_call_id  TEXT,
    mode            TEXT NOT NULL CHECK (mode IN ('policy', 'upstream')),
    match_level     TEXT CHECK (match_level IN ('EXACT', 'LOGICAL', 'SEMANTIC', 'MISMATCH')),
    model_drift     BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    report          TEXT NOT NULL
);
CREATE INDEX replays_call ON replays (tenant_id, call_id, created_at);
CREATE INDEX replays_replay_call ON replays (replay_call_id) WHERE replay_call_id IS NOT NULL;

-- Certificates as issued: `body` is the signed JSON, byte for byte.
CREATE TABLE certificates (
    id          TEXT PRIMARY KEY NOT NULL,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    kind        TEXT NOT NULL CHECK (kind IN ('replay', 'call', 'incident')),
    subject_id  TEXT NOT NULL,
    issued_at   BIGINT NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX certificates_subject ON certificates (tenant_id, subject_id, issued_at);
