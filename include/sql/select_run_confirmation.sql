-- Who answered "OK, send definitively" in this run, if anyone did (the first such answer).
SELECT actor, at
FROM delivery_audit
WHERE delivery_id = :delivery_id AND run_id = :run_id AND action = 'confirmed'
ORDER BY id
LIMIT 1
