INSERT INTO delivery_audit (delivery_id, run_id, action, actor, at, detail)
VALUES (:delivery_id, :run_id, :action, :actor, :at, :detail)
