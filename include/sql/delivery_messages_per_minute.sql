-- A delivery's sending-log rows per UTC minute and outcome: the Deployment page's first chart.
-- SQLite keeps logged_at as ISO text with its UTC offset; strftime reads the offset and gives the
-- minute in UTC (after rounding to the millisecond: a row of a minute's last half millisecond
-- counts in the next minute). PostgreSQL has its own file,
-- delivery_messages_per_minute.postgresql.sql. Only minutes with rows come back
-- (campaign.deployment fills the others with zeros).
SELECT strftime('%Y-%m-%d %H:%M:00', logged_at) AS minute, status, COUNT(*) AS messages
FROM broad_logs
WHERE delivery_id = :delivery_id
GROUP BY strftime('%Y-%m-%d %H:%M:00', logged_at), status
ORDER BY minute, status
