SELECT 1 AS is_target FROM delivery_targets WHERE delivery_id = :delivery_id AND profile_id = :profile_id
