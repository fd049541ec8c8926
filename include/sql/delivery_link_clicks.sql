-- The tracked links of a delivery with their clicks and distinct clickers, all and without the
-- clicks machines made (machine TRUE; NULL, recorded before the rules, counts as a person's), as
-- the KPIs show them side by side. These are the recorded events as they came, link by link.
SELECT l.id,
       l.url,
       COUNT(t.id) AS clicks,
       COUNT(DISTINCT t.profile_id) AS clickers,
       COUNT(CASE WHEN t.machine = FALSE OR t.machine IS NULL THEN t.id END) AS human_clicks,
       COUNT(DISTINCT CASE WHEN t.machine = FALSE OR t.machine IS NULL THEN t.profile_id END) AS human_clickers
FROM delivery_links l
LEFT JOIN tracking_logs t ON t.link_id = l.id AND t.event_type = 'click'
WHERE l.delivery_id = :delivery_id
GROUP BY l.id, l.url
ORDER BY l.id
