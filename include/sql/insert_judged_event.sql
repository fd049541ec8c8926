-- One tracking event as the endpoints record it: with the machine rules' verdict (campaign.machine).
INSERT INTO tracking_logs (delivery_id, profile_id, event_type, link_id, user_agent, event_at, machine, machine_rule)
VALUES (:delivery_id, :profile_id, :event_type, :link_id, :user_agent, :event_at, :machine, :machine_rule)
