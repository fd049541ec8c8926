-- A hard DSN for a message an earlier DSN bounced soft (the mailbox was full, then the account
-- was closed): the row becomes hard with the later status and diagnostic; bounced_at stays when
-- the message first bounced. Only a soft row bounced by DSN (bounced_at) changes, so the same hard
-- DSN read twice changes nothing the second time; hard_bounces and soft_bounces move in
-- compute_delivery_kpis.sql through failure_type alone.
UPDATE broad_logs
SET failure_type = 'hard',
    reason = :reason,
    dsn_status = :dsn_status,
    dsn_diagnostic = :dsn_diagnostic
WHERE id = :log_id AND status = 'bounced' AND bounced_at IS NOT NULL AND failure_type = 'soft'
