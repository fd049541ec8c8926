-- A recipient already logged keeps its first row: a retried chunk never records twice.
INSERT INTO broad_logs (delivery_id, profile_id, seq, email, status, failure_type, reason, smtp_code,
                        smtp_reply, message_id, attempts, worker, run_id, logged_at)
VALUES (:delivery_id, :profile_id, :seq, :email, :status, :failure_type, :reason, :smtp_code,
        :smtp_reply, :message_id, :attempts, :worker, :run_id, :logged_at)
ON CONFLICT (delivery_id, profile_id) DO NOTHING
