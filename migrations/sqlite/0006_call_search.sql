-- 0006 call search (SQLite): a full-text index over the readable text of each call's
-- request and response bodies.
--
-- The index lives in a second file beside this one, `agv.search.db` (created and kept by
-- src/store/search_sqlite.rs, not by migrations): its background indexer then never
-- holds this database's write lock, which the call recorder on the proxy's hot path
-- waits for. The index is derived data: when it is missing, of another version, or was
-- built from another database, it is rebuilt from `calls` in the background.
--
-- Here, this database only gets a random name of its own, so that an index built from
-- another database (a restored backup, a copied data directory) is recognised.
CREATE TABLE call_search_source (
    id    INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    token TEXT NOT NULL
);
INSERT INTO call_search_source (id, token) VALUES (1, lower(hex(randomblob(16))));
