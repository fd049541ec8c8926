-- Before tracking_logs_one_unsubscribe is added to a database made by an older version, whose
-- endpoint recorded one event per POST: keep each recipient's first unsubscribe event of a
-- delivery, delete the repeats (no KPI counts unsubscribe events).
DELETE FROM tracking_logs
WHERE event_type = 'unsubscribe'
  AND id > (
    SELECT MIN(earlier.id)
    FROM tracking_logs earlier
    WHERE earlier.delivery_id = tracking_logs.delivery_id
      AND earlier.profile_id = tracking_logs.profile_id
      AND earlier.event_type = 'unsubscribe'
  )
