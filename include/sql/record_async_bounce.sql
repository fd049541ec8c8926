-- An accepted message bounced later by mail (a DSN, RFC 3464): only a row still 'sent' becomes
-- 'bounced', so a DSN read twice, or one arriving after another, changes nothing the second time.
-- delivered falls and bounces rise in compute_delivery_kpis.sql through the status alone.
UPDATE broad_logs
SET status = 'bounced',
    failure_type = :failure_type,
    reason = :reason,
    bounced_at = :bounced_at,
    dsn_status = :dsn_status,
    dsn_diagnostic = :dsn_diagnostic
WHERE id = :log_id AND status = 'sent'
