-- Recipients with events in (after_id, upto_id]: those new events merged into the row stored so
-- far (earliest first open and first click, clicks added), next to that row; the same again for
-- the events of people only (machine FALSE, or NULL: recorded before the machine rules, counted as
-- human since nothing says otherwise). Only the new events are read, so the cost follows them and
-- not the history; each event is folded exactly once because the watermark moves past upto_id in
-- the same transaction. log_status: the recipient's sending-log status (NULL while its row is not
-- written yet); the KPIs count the engagement of delivered recipients only (stats).
WITH new_events AS (
    SELECT delivery_id,
           profile_id,
           MIN(event_at) AS first_open_at,
           MIN(CASE WHEN event_type = 'click' THEN event_at END) AS first_click_at,
           COUNT(CASE WHEN event_type = 'click' THEN 1 END) AS clicks,
           MIN(CASE WHEN COALESCE(machine, FALSE) = FALSE THEN event_at END) AS first_human_open_at,
           MIN(CASE WHEN event_type = 'click' AND COALESCE(machine, FALSE) = FALSE THEN event_at END)
               AS first_human_click_at,
           COUNT(CASE WHEN event_type = 'click' AND COALESCE(machine, FALSE) = FALSE THEN 1 END) AS human_clicks
    FROM tracking_logs
    WHERE id > :after_id AND id <= :upto_id AND event_type IN ('open', 'click')
    GROUP BY delivery_id, profile_id
)
SELECT n.delivery_id,
       n.profile_id,
       CASE WHEN e.first_open_at IS NULL OR n.first_open_at < e.first_open_at
            THEN n.first_open_at ELSE e.first_open_at END AS first_open_at,
       CASE WHEN n.first_click_at IS NULL THEN e.first_click_at
            WHEN e.first_click_at IS NULL OR n.first_click_at < e.first_click_at THEN n.first_click_at
            ELSE e.first_click_at END AS first_click_at,
       COALESCE(e.clicks, 0) + n.clicks AS clicks,
       CASE WHEN n.first_human_open_at IS NULL THEN e.first_human_open_at
            WHEN e.first_human_open_at IS NULL OR n.first_human_open_at < e.first_human_open_at
            THEN n.first_human_open_at ELSE e.first_human_open_at END AS first_human_open_at,
       CASE WHEN n.first_human_click_at IS NULL THEN e.first_human_click_at
            WHEN e.first_human_click_at IS NULL OR n.first_human_click_at < e.first_human_click_at
            THEN n.first_human_click_at ELSE e.first_human_click_at END AS first_human_click_at,
       COALESCE(e.human_clicks, 0) + n.human_clicks AS human_clicks,
       e.first_open_at AS old_first_open_at,
       e.first_click_at AS old_first_click_at,
       COALESCE(e.clicks, 0) AS old_clicks,
       e.first_human_open_at AS old_first_human_open_at,
       e.first_human_click_at AS old_first_human_click_at,
       COALESCE(e.human_clicks, 0) AS old_human_clicks,
       b.status AS log_status
FROM new_events n
LEFT JOIN delivery_engagement e ON e.delivery_id = n.delivery_id AND e.profile_id = n.profile_id
LEFT JOIN broad_logs b ON b.delivery_id = n.delivery_id AND b.profile_id = n.profile_id
