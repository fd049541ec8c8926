SELECT id, url FROM delivery_links WHERE delivery_id = :delivery_id ORDER BY id
