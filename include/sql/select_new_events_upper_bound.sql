-- The newest event to fold now. Events younger than the cutoff wait for the next run, so that
-- an event whose id was taken before a newer one's but committed after it is never skipped.
SELECT MAX(id) AS upto_id, COUNT(*) AS events
FROM tracking_logs
WHERE id > :after_id AND event_at <= :cutoff
