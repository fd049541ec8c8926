-- Only the run that owns the send may close it.
UPDATE deliveries
SET status = :status, finished_at = :now
WHERE id = :delivery_id AND run_id = :run_id AND status IN ('sending', 'failed')
