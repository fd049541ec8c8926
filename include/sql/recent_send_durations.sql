-- The last finished sends of this deployment: how many recipients each processed and between
-- which times (confirmed_at is set when the send starts, after the OK), for the duration estimate.
SELECT k.processed + k.ignored AS served, d.confirmed_at, d.finished_at
FROM deliveries d
JOIN delivery_kpis k ON k.delivery_id = d.id
WHERE d.status = 'sent' AND d.confirmed_at IS NOT NULL AND d.finished_at IS NOT NULL AND k.processed > 0
ORDER BY d.finished_at DESC
LIMIT :limit
