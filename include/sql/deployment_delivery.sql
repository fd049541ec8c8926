-- One delivery of the Deployment view with its progress (sending-log rows against the target;
-- a stopped send's cancelled rows are not progress), its stored KPIs and brake settings.
SELECT d.id, d.label, d.channel, d.status, d.confirmed_by, d.confirmed_at, d.run_id, d.target_count,
       d.finished_at, d.max_rate, d.brake_threshold, d.brake_window,
       (SELECT COUNT(*) FROM broad_logs b WHERE b.delivery_id = d.id AND b.status <> 'cancelled') AS logged,
       k.to_deliver, k.delivered, k.bounces_errors, k.hard_bounces, k.soft_bounces, k.errors, k.ignored, k.cancelled,
       k.processed, k.delivered_rate, k.bounce_error_rate,
       k.unique_opens, k.open_rate, k.unique_clicks, k.clicks, k.click_through_rate,
       k.human_unique_opens, k.human_open_rate, k.human_unique_clicks, k.human_clicks, k.human_click_through_rate,
       k.complaints, k.complaint_rate,
       k.computed_at,
       k.rates_updated_at
FROM deliveries d
LEFT JOIN delivery_kpis k ON k.delivery_id = d.id
WHERE d.id = :delivery_id
