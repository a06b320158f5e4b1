-- 0017 people management: a person can be disabled (kept, with their history, but unable
-- to sign in or use a session) and an open invitation revoked (it can no longer be
-- accepted, and says so). Keep the logical schema identical to the other backend's
-- 0017_people_management.sql; src/store/console.rs serves both.
ALTER TABLE users ADD COLUMN disabled_at BIGINT;
ALTER TABLE invitations ADD COLUMN revoked_at BIGINT;
