-- Compute stats, repair: one delivery's engagement rebuilt from all its tracking events folded
-- so far (id <= the watermark); newer ones are the next fold's. The human columns leave out the
-- events of machines (machine TRUE; NULL, recorded before the rules, counts as human).
INSERT INTO delivery_engagement (delivery_id, profile_id, first_open_at, first_click_at, clicks,
                                 first_human_open_at, first_human_click_at, human_clicks, updated_at)
SELECT delivery_id,
       profile_id,
       MIN(event_at),
       MIN(CASE WHEN event_type = 'click' THEN event_at END),
       COUNT(CASE WHEN event_type = 'click' THEN 1 END),
       MIN(CASE WHEN COALESCE(machine, FALSE) = FALSE THEN event_at END),
       MIN(CASE WHEN event_type = 'click' AND COALESCE(machine, FALSE) = FALSE THEN event_at END),
       COUNT(CASE WHEN event_type = 'click' AND COALESCE(machine, FALSE) = FALSE THEN 1 END),
       :now
FROM tracking_logs
WHERE delivery_id = :delivery_id AND event_type IN ('open', 'click') AND id <= :upto_id
GROUP BY delivery_id, profile_id
