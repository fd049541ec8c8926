-- Compute stats: one delivery's unique opens (open or click), unique clicks and clicks counted
-- straight from its tracking events folded so far (id <= the watermark), to check its engagement
-- rows against. Both tracking_logs indexes cover it (SQLite keeps id, the rowid, in every index;
-- PostgreSQL includes it), in recipient order so that each DISTINCT is a single ordered pass.
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
     WHERE delivery_id = :delivery_id AND event_type = 'click' AND id <= :upto_id) AS clicks
