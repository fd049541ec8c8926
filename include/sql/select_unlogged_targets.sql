-- One page of a chunk: its targets after the last seq already read that have no sending-log
-- row yet, with the profile's current state (it may have changed since preparation).
SELECT t.seq, t.profile_id, t.email, p.first_name, p.last_name, p.locale, p.mobile,
       p.blocklisted, p.quarantine_reason
FROM delivery_targets t
JOIN profiles p ON p.id = t.profile_id
LEFT JOIN broad_logs b ON b.delivery_id = t.delivery_id AND b.profile_id = t.profile_id
WHERE t.delivery_id = :delivery_id
  AND t.seq > :after_seq
  AND t.seq <= :last_seq
  AND b.id IS NULL
ORDER BY t.seq
LIMIT :page_size
