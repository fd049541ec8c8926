-- The audit trail of one delivery, oldest first, for the Deployment page.
SELECT id, run_id, action, actor, at, detail
FROM delivery_audit
WHERE delivery_id = :delivery_id
ORDER BY at, id
