-- The tracked links of a delivery with their clicks and distinct clickers.
SELECT l.id, l.url, COUNT(t.id) AS clicks, COUNT(DISTINCT t.profile_id) AS clickers
FROM delivery_links l
LEFT JOIN tracking_logs t ON t.link_id = l.id AND t.event_type = 'click'
WHERE l.delivery_id = :delivery_id
GROUP BY l.id, l.url
ORDER BY l.id
