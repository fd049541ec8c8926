UPDATE profiles
SET quarantine_reason = :reason, quarantined_at = :now
WHERE id = :profile_id AND quarantine_reason IS NULL
