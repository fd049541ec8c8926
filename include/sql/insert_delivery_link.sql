-- Register a tracked URL of a delivery; registering it again keeps the first row.
INSERT INTO delivery_links (delivery_id, url, label)
VALUES (:delivery_id, :url, :label)
ON CONFLICT (delivery_id, url) DO NOTHING
