-- The pacing row of a delivery, created by the first chunk that needs it.
INSERT INTO delivery_pacing (delivery_id, next_at) VALUES (:delivery_id, 0)
ON CONFLICT (delivery_id) DO NOTHING
