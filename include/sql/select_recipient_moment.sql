-- What the machine rules need to know of one recipient of a delivery when an open, a click or a
-- request of the hidden link arrives, in one read (no row: the profile is not a target). sent_at
-- is when its sending-log row was written (NULL while it has none: its message was accepted
-- within the chunk's commit bound, about a second, or was not sent; rule before_send_logged);
-- other_links the distinct links other than link_id it clicked since the start of the moment;
-- hidden_requests its requests of the hidden link since then. Each is a lookup of a unique or
-- per-recipient index: a recipient has few events, so the moment's are filtered from a handful
-- of rows.
SELECT t.profile_id,
       (SELECT b.logged_at FROM broad_logs b
        WHERE b.delivery_id = t.delivery_id AND b.profile_id = t.profile_id) AS sent_at,
       (SELECT COUNT(DISTINCT l.link_id) FROM tracking_logs l
        WHERE l.delivery_id = t.delivery_id AND l.profile_id = t.profile_id AND l.event_type = 'click'
          AND l.event_at >= :since AND l.link_id <> :link_id) AS other_links,
       (SELECT COUNT(*) FROM tracking_logs l
        WHERE l.delivery_id = t.delivery_id AND l.profile_id = t.profile_id AND l.event_type = 'hidden_link'
          AND l.event_at >= :since) AS hidden_requests
FROM delivery_targets t
WHERE t.delivery_id = :delivery_id AND t.profile_id = :profile_id
