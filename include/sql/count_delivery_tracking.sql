-- Compute stats: one delivery's unique opens (open or click), unique clicks and clicks counted
-- straight from its tracking events folded so far (id <= the watermark), to check its engagement
-- rows against; then the same for people only (machine FALSE, or NULL: recorded before the
-- machine rules). Indexes cover it (SQLite keeps id, the rowid, in every index; PostgreSQL
-- includes it): tracking_logs_delivery_type for all events, in recipient order so that each
-- DISTINCT is a single ordered pass, and tracking_logs_delivery_machine for the human ones.
-- As in compute_delivery_kpis.sql, recipients whose message was not delivered (every sending-log
-- status but 'sent') are left out: their events are counted from the small ranges of those
-- statuses and subtracted.
WITH everyone AS MATERIALIZED (
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
),
undelivered AS MATERIALIZED (
    SELECT
        COUNT(DISTINCT l.profile_id) AS unique_opens,
        COUNT(DISTINCT CASE WHEN l.event_type = 'click' THEN l.profile_id END) AS unique_clicks,
        COUNT(CASE WHEN l.event_type = 'click' THEN 1 END) AS clicks,
        COUNT(DISTINCT CASE WHEN l.machine = FALSE OR l.machine IS NULL THEN l.profile_id END) AS human_unique_opens,
        COUNT(DISTINCT CASE WHEN l.event_type = 'click' AND (l.machine = FALSE OR l.machine IS NULL)
                            THEN l.profile_id END) AS human_unique_clicks,
        COUNT(CASE WHEN l.event_type = 'click' AND (l.machine = FALSE OR l.machine IS NULL) THEN 1 END) AS human_clicks
    -- CROSS JOIN: SQLite takes the tables in the order written (PostgreSQL plans it as any join):
    -- the few not-delivered rows first, then each one's events, never every event of the delivery.
    FROM broad_logs b
    CROSS JOIN tracking_logs l
    WHERE l.delivery_id = b.delivery_id AND l.profile_id = b.profile_id
      AND b.delivery_id = :delivery_id AND b.status IN ('bounced', 'failed', 'ignored', 'cancelled')
      AND l.event_type IN ('open', 'click') AND l.id <= :upto_id
)
SELECT everyone.unique_opens - undelivered.unique_opens AS unique_opens,
       everyone.unique_clicks - undelivered.unique_clicks AS unique_clicks,
       everyone.clicks - undelivered.clicks AS clicks,
       everyone.human_unique_opens - undelivered.human_unique_opens AS human_unique_opens,
       everyone.human_unique_clicks - undelivered.human_unique_clicks AS human_unique_clicks,
       everyone.human_clicks - undelivered.human_clicks AS human_clicks
FROM everyone, undelivered
