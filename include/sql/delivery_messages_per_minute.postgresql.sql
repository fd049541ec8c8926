-- A delivery's sending-log rows per UTC minute and outcome: the Deployment page's first chart
-- (PostgreSQL; delivery_messages_per_minute.sql for SQLite). The minute is a timestamp without
-- time zone, in UTC.
SELECT date_trunc('minute', logged_at AT TIME ZONE 'UTC') AS minute, status, COUNT(*) AS messages
FROM broad_logs
WHERE delivery_id = :delivery_id
GROUP BY date_trunc('minute', logged_at AT TIME ZONE 'UTC'), status
ORDER BY minute, status
