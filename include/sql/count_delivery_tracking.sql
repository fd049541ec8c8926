-- Compute stats: one delivery's unique opens (open or click), unique clicks and clicks counted
-- straight from its tracking events folded so far (id <= the watermark), to check its engagement
-- rows against; then the same for people only (machine FALSE, or NULL: recorded before the
-- machine rules). Indexes cover it (SQLite keeps id, the rowid, in every index; PostgreSQL
-- includes it): tracking_logs_delivery_type for all events, in recipient order so that each
-- DISTINCT is a single ordered pass, and tracking_logs_delivery_machine for the human ones.
SELECT
    (SELECT COUNT(*) FROM (
        SELECT DISTINCT profile_id FROM tracking_logs
        WHERE delivery_id = :delivery_id AND event_type IN ('open', 'click') AND id <= :upto_id
    ) AS openers) AS unique_opens,
    (SELECT COUNT(*) FROM (
        SELECT DISTINCT profile_id FROM tracking_logs
        WHERE delivery_id = :delivery_id AND event_type = 'click' AND id <= :upto_id
    ) AS clickers) AS unique_clicks,
    (SELECT COUNT(*) FROM tracking_logs
     WHERE delivery_id = :delivery_id AND event_type = 'click' AND id <= :upto_id) AS clicks,
    (SELECT COUNT(*) FROM (
        SELECT DISTINCT profile_id FROM tracking_logs
        WHERE delivery_id = :delivery_id AND event_type IN ('open', 'click')
          AND (machine = FALSE OR machine IS NULL) AND id <= :upto_id
    ) AS human_openers) AS human_unique_opens,
    (SELECT COUNT(*) FROM (
        SELECT DISTINCT profile_id FROM tracking_logs
        WHERE delivery_id = :delivery_id AND event_type = 'click'
          AND (machine = FALSE OR machine IS NULL) AND id <= :upto_id
    ) AS human_clickers) AS human_unique_clicks,
    (SELECT COUNT(*) FROM tracking_logs
     WHERE delivery_id = :delivery_id AND event_type = 'click'
       AND (machine = FALSE OR machine IS NULL) AND id <= :upto_id) AS human_clicks
