-- 0020 incident merges: a duplicate merged into another incident names it, so that the
-- list can say so and its fingerprint's new signals join the incident it went into (see
-- src/store/incidents.rs `merge`). Keep the logical schema identical on both backends.
ALTER TABLE incidents ADD COLUMN merged_into TEXT;
