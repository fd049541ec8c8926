INSERT INTO tracking_logs (delivery_id, profile_id, event_type, link_id, user_agent, event_at)
VALUES (:delivery_id, :profile_id, :event_type, :link_id, :user_agent, :event_at)
