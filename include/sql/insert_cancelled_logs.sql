-- A stopped send: every target still without a sending-log row gets a cancelled one, in one
-- statement (the unique key on delivery and profile keeps it to one row per recipient).
INSERT INTO broad_logs (delivery_id, profile_id, seq, email, status, reason, attempts, run_id, logged_at)
SELECT t.delivery_id, t.profile_id, t.seq, t.email, 'cancelled', 'the send was stopped', 0, :run_id, :now
FROM delivery_targets t
WHERE t.delivery_id = :delivery_id
  AND NOT EXISTS (
      SELECT 1 FROM broad_logs b WHERE b.delivery_id = t.delivery_id AND b.profile_id = t.profile_id
  )
