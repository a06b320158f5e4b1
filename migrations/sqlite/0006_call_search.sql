-- 0006 call search (SQLite): a full-text index over the readable text of each call's
-- request and response bodies.
--
-- The recorder's insert into `calls` is on the proxy's hot path, so nothing here is
-- written by that insert (no trigger): a background indexer in agv-server reads calls
-- past a watermark (the calls rowid, which SQLite assigns in commit order because it has
-- one writer at a time), extracts their text and fills `call_fts` in batches, a few
-- times a second. Search may therefore lag the newest calls by under a second.
--
-- The index's rowid is a time key, `created_at` in milliseconds shifted left 20 bits plus
-- a slot (the call's own rowid modulo 2^20, moved on in the rare collision): walking the
-- matches of a word in rowid order is walking them newest first, so a page of a search
-- stops after the page's calls instead of sorting every match by time.
--
-- Contentless: the text is not stored a second time, only the index. `call_id` is kept
-- (contentless_unindexed) to join a hit to its call. `tenant` holds the tenant id as one
-- token, so that a tenant's search intersects with its own calls inside the index. The
-- tokenizer keeps diacritics, because agv-server tokenizes the text itself, identically
-- for SQLite and Postgres.
CREATE VIRTUAL TABLE call_fts USING fts5(
    call_id UNINDEXED,
    tenant,
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
