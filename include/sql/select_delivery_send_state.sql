-- What a chunk reads between two batches: the switch (status), the run that owns the send, the
-- automatic brake's settings (NULL = the defaults of campaign.controls), and since when the
-- delivery is paused (its latest pause), which sets how long a paused chunk sleeps.
SELECT d.status, d.run_id, d.brake_threshold, d.brake_window, d.brake_after_log_id,
       (SELECT MAX(a.at) FROM delivery_audit a
        WHERE a.delivery_id = d.id AND a.action IN ('paused', 'auto_paused')) AS paused_at
FROM deliveries d
WHERE d.id = :delivery_id
