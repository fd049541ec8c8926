-- The sending-log row an asynchronous bounce or feedback report names (return path or Message-ID):
-- at most one per delivery and profile (broad_logs_one_per_recipient). bounced_at: set when an
-- earlier DSN bounced it, so its message had been accepted.
SELECT id, status, bounced_at, message_id, email
FROM broad_logs
WHERE delivery_id = :delivery_id AND profile_id = :profile_id
