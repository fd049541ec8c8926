-- The unsubscribe event of one recipient of a delivery, once: a repeated or concurrent request
-- meets the unique index tracking_logs_one_unsubscribe and adds nothing (SQLite 3.24+, PostgreSQL 9.5+).
INSERT INTO tracking_logs (delivery_id, profile_id, event_type, link_id, user_agent, event_at)
VALUES (:delivery_id, :profile_id, 'unsubscribe', NULL, :user_agent, :event_at)
ON CONFLICT DO NOTHING
