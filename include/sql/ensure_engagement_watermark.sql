INSERT INTO tracking_watermarks (name, last_event_id, updated_at)
VALUES ('engagement', 0, :now)
ON CONFLICT (name) DO NOTHING
