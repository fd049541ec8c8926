-- The tracked links of a delivery with their clicks and distinct clickers, all and without the
-- clicks machines made (machine TRUE; NULL, recorded before the rules, counts as a person's), as
-- the KPIs show them side by side. Like the KPIs, only delivered recipients count: a click of a
-- recipient whose sending-log row is not 'sent' (bounced later by a DSN, failed, ignored,
-- cancelled) is left out, and one whose row is not written yet counts (compute_delivery_kpis.sql).
-- Only this delivery's clicks are read (tracking_logs_delivery_type), each with one lookup of the
-- unique key broad_logs_one_per_recipient: the cost follows the delivery's clicks, not the table.
SELECT l.id,
       l.url,
       COUNT(c.id) AS clicks,
       COUNT(DISTINCT c.profile_id) AS clickers,
       COUNT(CASE WHEN c.machine = FALSE OR c.machine IS NULL THEN c.id END) AS human_clicks,
       COUNT(DISTINCT CASE WHEN c.machine = FALSE OR c.machine IS NULL THEN c.profile_id END) AS human_clickers
FROM delivery_links l
LEFT JOIN (
    SELECT t.id, t.link_id, t.profile_id, t.machine
    FROM tracking_logs t
    LEFT JOIN broad_logs b ON b.delivery_id = t.delivery_id AND b.profile_id = t.profile_id
    WHERE t.delivery_id = :delivery_id AND t.event_type = 'click' AND (b.status IS NULL OR b.status = 'sent')
) AS c ON c.link_id = l.id
WHERE l.delivery_id = :delivery_id
GROUP BY l.id, l.url
ORDER BY l.id
