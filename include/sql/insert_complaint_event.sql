-- The complaint event of one recipient of a delivery (a feedback report, RFC 5965), once: a second
-- report for the same message meets the unique index tracking_logs_one_complaint and adds nothing.
INSERT INTO tracking_logs (delivery_id, profile_id, event_type, link_id, user_agent, event_at)
VALUES (:delivery_id, :profile_id, 'complaint', NULL, :user_agent, :event_at)
ON CONFLICT DO NOTHING
