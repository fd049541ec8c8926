SELECT 1 AS found FROM deliveries WHERE id = :delivery_id
