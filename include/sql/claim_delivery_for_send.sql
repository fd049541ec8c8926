-- Compare-and-set ready -> sending: exactly one run can win it.
UPDATE deliveries
SET status = 'sending', confirmed_by = :operator, confirmed_at = :now, run_id = :run_id
WHERE id = :delivery_id AND status = 'ready'
