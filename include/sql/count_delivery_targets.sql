SELECT COUNT(*) AS n FROM delivery_targets WHERE delivery_id = :delivery_id
