-- A delivery's open and click events per UTC hour: the Deployment page's second chart
-- (PostgreSQL; delivery_events_per_hour.sql for SQLite). Events, not recipients. The hour is a
-- timestamp without time zone, in UTC.
SELECT date_trunc('hour', event_at AT TIME ZONE 'UTC') AS hour, event_type, COUNT(*) AS events
FROM tracking_logs
WHERE delivery_id = :delivery_id AND event_type IN ('open', 'click')
GROUP BY date_trunc('hour', event_at AT TIME ZONE 'UTC'), event_type
ORDER BY hour, event_type
