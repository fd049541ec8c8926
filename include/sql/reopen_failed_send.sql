-- Compare-and-set failed -> sending for the run that owns the send: one of its send_chunk tasks
-- was cleared and runs again, so the send goes on and can be paused or stopped again.
UPDATE deliveries
SET status = 'sending', finished_at = NULL
WHERE id = :delivery_id AND run_id = :run_id AND status = 'failed'
