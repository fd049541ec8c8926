-- The delivery a confirm_send run sends, or asks to send (before the OK it owns no delivery yet,
-- but its approval is on the audit trail).
SELECT id FROM deliveries WHERE run_id = :run_id
UNION
SELECT delivery_id FROM delivery_audit WHERE run_id = :run_id
