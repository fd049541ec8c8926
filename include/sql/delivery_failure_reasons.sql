-- Bounces, errors and ignored recipients of a delivery, broken down by reason.
SELECT status, failure_type, smtp_code, COALESCE(reason, '') AS reason, COUNT(*) AS recipients
FROM broad_logs
WHERE delivery_id = :delivery_id AND status IN ('bounced', 'failed', 'ignored')
GROUP BY status, failure_type, smtp_code, COALESCE(reason, '')
ORDER BY COUNT(*) DESC, status
