-- The latest entry of a run's approval on the delivery's audit trail: an OK counts only while it
-- is the latest (a later Cancel, timeout or new question of the same run voids it).
SELECT action, actor, at, detail
FROM delivery_audit
WHERE delivery_id = :delivery_id AND run_id = :run_id
ORDER BY id DESC
LIMIT 1
