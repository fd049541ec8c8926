-- Compare-and-set paused -> sending. The automatic brake's window restarts here: failures before
-- the pause (which may be why it paused) do not pause the resumed send again.
UPDATE deliveries
SET status = 'sending',
    brake_after_log_id = COALESCE((SELECT MAX(id) FROM broad_logs WHERE delivery_id = :delivery_id), 0)
WHERE id = :delivery_id AND status = 'paused'
