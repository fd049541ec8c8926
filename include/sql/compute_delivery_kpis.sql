-- Every KPI of one delivery from its targets, sending logs and folded engagement.
-- Rates are fractions; a zero denominator gives NULL.
WITH logs AS (
    SELECT
        COUNT(CASE WHEN status = 'sent' THEN 1 END) AS delivered,
        COUNT(CASE WHEN status IN ('bounced', 'failed') THEN 1 END) AS bounces_errors,
        COUNT(CASE WHEN status = 'bounced' AND failure_type = 'hard' THEN 1 END) AS hard_bounces,
        COUNT(CASE WHEN status = 'bounced' AND failure_type = 'soft' THEN 1 END) AS soft_bounces,
        COUNT(CASE WHEN status = 'failed' THEN 1 END) AS errors,
        COUNT(CASE WHEN status = 'ignored' THEN 1 END) AS ignored
    FROM broad_logs
    WHERE delivery_id = :delivery_id
),
targets AS (
    SELECT COUNT(*) AS to_deliver FROM delivery_targets WHERE delivery_id = :delivery_id
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
    logs.bounces_errors,
    logs.hard_bounces,
    logs.soft_bounces,
    logs.errors,
    logs.ignored,
    logs.delivered + logs.bounces_errors AS processed,
    CAST(logs.delivered AS DOUBLE PRECISION) / NULLIF(logs.delivered + logs.bounces_errors, 0) AS delivered_rate,
    CAST(logs.bounces_errors AS DOUBLE PRECISION) / NULLIF(logs.delivered + logs.bounces_errors, 0) AS bounce_error_rate,
    engagement.unique_opens,
    CAST(engagement.unique_opens AS DOUBLE PRECISION) / NULLIF(logs.delivered, 0) AS open_rate,
    engagement.unique_clicks,
    engagement.clicks,
    CAST(engagement.unique_clicks AS DOUBLE PRECISION) / NULLIF(logs.delivered, 0) AS click_through_rate
FROM logs, targets, engagement
