-- 0006 call search (Postgres): a full-text index over the readable text of each call's
-- request and response bodies, filled asynchronously like SQLite's (see
-- migrations/sqlite/0006_call_search.sql), so both backends index exactly the same
-- tokens: agv-server extracts and tokenizes the text and stores a ready-made tsvector.
--
-- Postgres has no rowid, so calls get an insertion sequence for the indexer to follow.
-- It costs the recorder a sequence value and one append to a btree per call (far less
-- than a GIN expression index on the bodies would). Adding it numbers existing calls
-- once (the table is rewritten).
ALTER TABLE calls ADD COLUMN search_seq BIGINT GENERATED ALWAYS AS IDENTITY;
CREATE INDEX calls_search_seq ON calls (search_seq);

-- One row per indexed call. Not a foreign key: deleting calls must not wait on it.
-- The call's tenant and time are copied here, so that a search walks one tenant's
-- matches newest first in slices of time without touching `calls` until a page is cut.
CREATE TABLE call_search (
    call_seq   BIGINT PRIMARY KEY NOT NULL,
    call_id    TEXT COLLATE "C" NOT NULL,
    tenant_id  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    doc        TSVECTOR NOT NULL
);
CREATE INDEX call_search_doc ON call_search USING GIN (doc);
CREATE INDEX call_search_tenant_created ON call_search (tenant_id, created_at DESC, call_id DESC);

-- The indexer's progress. Concurrent transactions may commit sequence values out of
-- order, so besides the highest indexed value (indexed_seq) the indexer keeps safe_seq,
-- below which every call is known to be indexed, and re-checks (safe_seq, pending_seq]
-- for late commits once every transaction that could hold such a value has ended
-- (the snapshot's xmin has passed pending_xmax).
CREATE TABLE call_search_state (
    id            INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    indexed_seq   BIGINT NOT NULL,
    safe_seq      BIGINT NOT NULL,
    pending_seq   BIGINT,
    pending_xmax  BIGINT
);
INSERT INTO call_search_state (id, indexed_seq, safe_seq) VALUES (1, 0, 0);
