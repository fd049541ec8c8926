-- Recipients with events in (after_id, upto_id]: their engagement recomputed from all their
-- events up to upto_id, next to the row stored so far. The work follows the new events only.
WITH affected AS (
    SELECT DISTINCT delivery_id, profile_id
    FROM tracking_logs
    WHERE id > :after_id AND id <= :upto_id
),
fresh AS (
    SELECT t.delivery_id,
           t.profile_id,
           MIN(CASE WHEN t.event_type IN ('open', 'click') THEN t.event_at END) AS first_open_at,
           MIN(CASE WHEN t.event_type = 'click' THEN t.event_at END) AS first_click_at,
           COUNT(CASE WHEN t.event_type = 'click' THEN 1 END) AS clicks
    FROM tracking_logs t
    JOIN affected a ON a.delivery_id = t.delivery_id AND a.profile_id = t.profile_id
    WHERE t.id <= :upto_id
    GROUP BY t.delivery_id, t.profile_id
)
SELECT f.delivery_id,
       f.profile_id,
       f.first_open_at,
       f.first_click_at,
       f.clicks,
       e.first_open_at AS old_first_open_at,
       e.first_click_at AS old_first_click_at,
       COALESCE(e.clicks, 0) AS old_clicks
FROM fresh f
LEFT JOIN delivery_engagement e ON e.delivery_id = f.delivery_id AND e.profile_id = f.profile_id
