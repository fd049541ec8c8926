-- Targets the send will skip (sending-log status ignored) because their profile was blocklisted
-- or quarantined after the delivery was prepared: preparation left such profiles out.
SELECT COALESCE(SUM(CASE WHEN p.blocklisted THEN 1 ELSE 0 END), 0) AS blocklisted,
       COALESCE(SUM(CASE WHEN NOT p.blocklisted AND p.quarantine_reason IS NOT NULL THEN 1 ELSE 0 END), 0)
           AS quarantined
FROM delivery_targets t
JOIN profiles p ON p.id = t.profile_id
WHERE t.delivery_id = :delivery_id
