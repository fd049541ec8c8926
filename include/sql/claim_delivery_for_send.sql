-- Compare-and-set ready -> sending: exactly one run can win it. A rate limit given in the
-- trigger form (max_rate) replaces the delivery's own for this send.
UPDATE deliveries
SET status = 'sending', confirmed_by = :operator, confirmed_at = :now, run_id = :run_id,
    max_rate = COALESCE(:max_rate, max_rate)
WHERE id = :delivery_id AND status = 'ready'
