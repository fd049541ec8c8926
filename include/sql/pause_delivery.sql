-- Compare-and-set sending -> paused: of two pauses (or a pause and a stop) exactly one applies.
UPDATE deliveries
SET status = 'paused'
WHERE id = :delivery_id AND status = 'sending'
