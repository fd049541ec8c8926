-- Bounces, errors and ignored recipients of a delivery, broken down by reason and code. A message
-- the relay accepted (250) and a DSN bounced later (bounced_at) is shown with the DSN's status
-- (RFC 3464 2.3.4), not with the relay's 250: smtp_code is kept for failures at send time only.
SELECT status, failure_type,
       CASE WHEN bounced_at IS NULL THEN smtp_code END AS smtp_code,
       dsn_status,
       COALESCE(reason, '') AS reason, COUNT(*) AS recipients
FROM broad_logs
WHERE delivery_id = :delivery_id AND status IN ('bounced', 'failed', 'ignored')
GROUP BY status, failure_type, CASE WHEN bounced_at IS NULL THEN smtp_code END, dsn_status, COALESCE(reason, '')
ORDER BY COUNT(*) DESC, status
