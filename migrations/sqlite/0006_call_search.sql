-- 0006 call search (SQLite): a full-text index over the readable text of each call's
-- request and response bodies.
--
-- The recorder's insert into `calls` is on the proxy's hot path, so nothing here is
-- written by that insert (no trigger): a background indexer in agv-server reads calls
-- past a watermark (the calls rowid, which SQLite assigns in commit order because it has
-- one writer at a time), extracts their text and fills `call_fts` in batches, a few
-- times a second. Search may therefore lag the newest calls by under a second.
--
-- Contentless: the text is not stored a second time, only the index. `call_id` is kept
-- (contentless_unindexed) so that a hit is joined on both rowid and id, and a rowid
-- reused after a deletion can never show another call. The tokenizer keeps diacritics,
-- because agv-server tokenizes the text itself, identically for SQLite and Postgres.
CREATE VIRTUAL TABLE call_fts USING fts5(
    call_id UNINDEXED,
    body,
    content = '',
    contentless_delete = 1,
    contentless_unindexed = 1,
    tokenize = 'unicode61 remove_diacritics 0'
);

-- The indexer's watermark: every call with a rowid at or below it is indexed.
CREATE TABLE call_search_state (
    id           INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    indexed_rowid BIGINT NOT NULL
);
INSERT INTO call_search_state (id, indexed_rowid) VALUES (1, 0);
