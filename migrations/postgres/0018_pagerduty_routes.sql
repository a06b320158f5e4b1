-- 0018 PagerDuty routes: an alert route may also be a PagerDuty Events API v2 integration
-- (its routing key is the sealed secret). Keep the logical schema identical to the other
-- backend's 0018_pagerduty_routes.sql; src/store/alerts.rs serves both.
ALTER TABLE alert_routes DROP CONSTRAINT alert_routes_kind_check;
ALTER TABLE alert_routes ADD CONSTRAINT alert_routes_kind_check
    CHECK (kind IN ('slack', 'webhook', 'pagerduty'));
