-- A link only redirects within its own delivery: no open redirect through another id.
SELECT url FROM delivery_links WHERE id = :link_id AND delivery_id = :delivery_id
