-- The sentence of a delivery's latest pause, automatic pause or stop: why its chunks hold.
SELECT detail
FROM delivery_audit
WHERE delivery_id = :delivery_id AND action IN ('paused', 'auto_paused', 'stopped')
ORDER BY id DESC
LIMIT 1
