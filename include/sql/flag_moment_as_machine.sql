-- A same-second cluster of clicks, or the hidden link, shows that a machine read one recipient's
-- mail: its events of that moment (since the given time, of the given types) not flagged yet become
-- a machine's under that rule. Not folded yet: the fold's lag is longer than the moment (campaign.machine).
UPDATE tracking_logs
SET machine = TRUE, machine_rule = :machine_rule
WHERE delivery_id = :delivery_id AND profile_id = :profile_id
  AND event_type IN (:first_type, :second_type)
  AND event_at >= :since
  AND (machine IS NULL OR machine = FALSE)
