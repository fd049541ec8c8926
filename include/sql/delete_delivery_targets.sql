DELETE FROM delivery_targets WHERE delivery_id = :delivery_id
