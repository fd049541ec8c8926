DELETE FROM delivery_engagement WHERE delivery_id = :delivery_id
