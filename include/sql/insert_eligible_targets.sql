-- The prepared audience: every profile with an address that is neither blocklisted nor
-- quarantined, numbered 1..n so that chunks are contiguous seq ranges.
INSERT INTO delivery_targets (delivery_id, seq, profile_id, email)
SELECT :delivery_id, ROW_NUMBER() OVER (ORDER BY p.id), p.id, p.email
FROM profiles p
WHERE p.email IS NOT NULL
  AND p.blocklisted = FALSE
  AND p.quarantine_reason IS NULL
