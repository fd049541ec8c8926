SELECT last_event_id FROM tracking_watermarks WHERE name = 'engagement'
