-- Every KPI of one delivery from its targets, sending logs and folded engagement.
-- Rates are fractions; a zero denominator gives NULL. Each sending-log count is a range of the
-- covering index broad_logs_delivery_outcome, so the whole query reads no table row of broad_logs.
-- MATERIALIZED: PostgreSQL would otherwise inline the counts into every expression using them.
WITH logs AS MATERIALIZED (
    SELECT
        (SELECT COUNT(*) FROM broad_logs WHERE delivery_id = :delivery_id AND status = 'sent') AS delivered,
        (SELECT COUNT(*) FROM broad_logs WHERE delivery_id = :delivery_id AND status = 'bounced') AS bounces,
        (SELECT COUNT(*) FROM broad_logs
         WHERE delivery_id = :delivery_id AND status = 'bounced' AND failure_type = 'hard') AS hard_bounces,
        (SELECT COUNT(*) FROM broad_logs
         WHERE delivery_id = :delivery_id AND status = 'bounced' AND failure_type = 'soft') AS soft_bounces,
        (SELECT COUNT(*) FROM broad_logs WHERE delivery_id = :delivery_id AND status = 'failed') AS errors,
        (SELECT COUNT(*) FROM broad_logs WHERE delivery_id = :delivery_id AND status = 'ignored') AS ignored
),
targets AS (
    -- The audience is frozen when the delivery is prepared, and target_count counted it then.
    SELECT COALESCE(
        (SELECT target_count FROM deliveries WHERE id = :delivery_id),
        (SELECT COUNT(*) FROM delivery_targets WHERE delivery_id = :delivery_id)
    ) AS to_deliver
),
engagement AS (
    SELECT
        COUNT(first_open_at) AS unique_opens,
        COUNT(first_click_at) AS unique_clicks,
        COALESCE(SUM(clicks), 0) AS clicks
    FROM delivery_engagement
    WHERE delivery_id = :delivery_id
)
SELECT
    targets.to_deliver,
    logs.delivered,
    logs.bounces + logs.errors AS bounces_errors,
    logs.hard_bounces,
    logs.soft_bounces,
    logs.errors,
    logs.ignored,
    logs.delivered + logs.bounces + logs.errors AS processed,
    CAST(logs.delivered AS DOUBLE PRECISION) / NULLIF(logs.delivered + logs.bounces + logs.errors, 0) AS delivered_rate,
    CAST(logs.bounces + logs.errors AS DOUBLE PRECISION)
        / NULLIF(logs.delivered + logs.bounces + logs.errors, 0) AS bounce_error_rate,
    engagement.unique_opens,
    CAST(engagement.unique_opens AS DOUBLE PRECISION) / NULLIF(logs.delivered, 0) AS open_rate,
    engagement.unique_clicks,
    engagement.clicks,
    CAST(engagement.unique_clicks AS DOUBLE PRECISION) / NULLIF(logs.delivered, 0) AS click_through_rate
FROM logs, targets, engagement
