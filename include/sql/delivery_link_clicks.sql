-- The tracked links of a delivery with their clicks and distinct clickers, all and without the
-- clicks machines made (machine TRUE; NULL, recorded before the rules, counts as a person's), as
-- the KPIs show them side by side. Like the KPIs, only delivered recipients count: a click of a
-- recipient whose sending-log row is not 'sent' (bounced later by a DSN, failed, ignored,
-- cancelled) is left out, and one whose row is not written yet counts (compute_delivery_kpis.sql).
-- The LEFT JOIN reads one row of the unique key broad_logs_one_per_recipient per click.
SELECT l.id,
       l.url,
       COUNT(t.id) AS clicks,
       COUNT(DISTINCT t.profile_id) AS clickers,
       COUNT(CASE WHEN t.machine = FALSE OR t.machine IS NULL THEN t.id END) AS human_clicks,
       COUNT(DISTINCT CASE WHEN t.machine = FALSE OR t.machine IS NULL THEN t.profile_id END) AS human_clickers
FROM delivery_links l
LEFT JOIN (
    tracking_logs t
    LEFT JOIN broad_logs b ON b.delivery_id = t.delivery_id AND b.profile_id = t.profile_id
) ON t.link_id = l.id AND t.event_type = 'click' AND (b.status IS NULL OR b.status = 'sent')
WHERE l.delivery_id = :delivery_id
GROUP BY l.id, l.url
ORDER BY l.id
