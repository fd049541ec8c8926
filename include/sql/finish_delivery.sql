-- Only the run that owns the send may close it, whatever control state it reached meanwhile.
UPDATE deliveries
SET status = :status, finished_at = :now
WHERE id = :delivery_id AND run_id = :run_id AND status IN ('sending', 'paused', 'stopping', 'failed')
