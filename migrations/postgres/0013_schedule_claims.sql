-- 0013 schedule claims: when several instances share one database, each scheduled run
-- (a cron schedule's firing, to the second) is claimed by exactly one of them before it
-- is queued, so backups, retention and housekeeping run once. Keep the logical schema
-- identical on both backends; src/store/schedule.rs serves both.
CREATE TABLE schedule_claims (
    name        TEXT NOT NULL,
    slot        BIGINT NOT NULL,
    instance    TEXT NOT NULL,
    claimed_at  BIGINT NOT NULL,
    PRIMARY KEY (name, slot)
);
