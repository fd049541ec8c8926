-- A delivery's open and click events per UTC hour: the Deployment page's second chart. Events,
-- not recipients: a recipient who opens three times counts three.
-- SQLite keeps event_at as ISO text with its UTC offset; strftime reads the offset and gives the
-- hour in UTC (after rounding to the millisecond). PostgreSQL has its own file,
-- delivery_events_per_hour.postgresql.sql. Only hours with events come back.
SELECT strftime('%Y-%m-%d %H:00:00', event_at) AS hour, event_type, COUNT(*) AS events
FROM tracking_logs
WHERE delivery_id = :delivery_id AND event_type IN ('open', 'click')
GROUP BY strftime('%Y-%m-%d %H:00:00', event_at), event_type
ORDER BY hour, event_type
