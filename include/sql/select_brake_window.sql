-- The automatic brake's window: of the delivery's last processed messages (sent, bounced,
-- failed; ignored and cancelled ones were not offered to the relay) since the send started or
-- was last resumed, how many bounced or failed. Newest first on broad_logs_delivery_recent.
SELECT COUNT(*) AS processed,
       SUM(CASE WHEN status IN ('bounced', 'failed') THEN 1 ELSE 0 END) AS bounces_errors
FROM (
    SELECT status
    FROM broad_logs
    WHERE delivery_id = :delivery_id AND id > :after_id AND status IN ('sent', 'bounced', 'failed')
    ORDER BY id DESC
    LIMIT :window
) recent
