-- Compare-and-set sending or paused -> stopping; the run's aggregate_kpis closes it as stopped.
UPDATE deliveries
SET status = 'stopping'
WHERE id = :delivery_id AND status IN ('sending', 'paused')
