-- A profile's delivery history: every delivery it was targeted by, the send outcome (with the
-- DSN that bounced it later, if one did), its first open and first click (a click counts as an
-- open), and when it complained (a feedback report). Reusable by the data team as it is.
SELECT d.id AS delivery_id,
       d.label,
       d.status AS delivery_status,
       d.confirmed_at,
       b.status AS send_status,
       b.failure_type,
       b.reason,
       -- when the relay took the message: none for a row whose message never left
       CASE WHEN b.status = 'sent' OR b.bounced_at IS NOT NULL THEN b.logged_at END AS sent_at,
       b.bounced_at,
       b.dsn_status,
       MIN(CASE WHEN tl.event_type IN ('open', 'click') THEN tl.event_at END) AS first_open_at,
       MIN(CASE WHEN tl.event_type = 'click' THEN tl.event_at END) AS first_click_at,
       COUNT(CASE WHEN tl.event_type = 'click' THEN 1 END) AS clicks,
       MIN(CASE WHEN tl.event_type = 'complaint' THEN tl.event_at END) AS complained_at
FROM delivery_targets t
JOIN deliveries d ON d.id = t.delivery_id
LEFT JOIN broad_logs b ON b.delivery_id = t.delivery_id AND b.profile_id = t.profile_id
LEFT JOIN tracking_logs tl ON tl.delivery_id = t.delivery_id AND tl.profile_id = t.profile_id
WHERE t.profile_id = :profile_id
GROUP BY d.id, d.label, d.status, d.confirmed_at, b.status, b.failure_type, b.reason, b.logged_at, b.bounced_at,
         b.dsn_status
ORDER BY d.id
