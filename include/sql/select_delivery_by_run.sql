SELECT id FROM deliveries WHERE run_id = :run_id
