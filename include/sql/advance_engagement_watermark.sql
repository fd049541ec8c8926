UPDATE tracking_watermarks SET last_event_id = :upto_id, updated_at = :now
WHERE name = 'engagement' AND last_event_id < :upto_id
