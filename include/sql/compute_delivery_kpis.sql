-- Every KPI of one delivery from its targets, sending logs and folded engagement.
-- Rates are fractions; a zero denominator gives NULL. Every count is a range of a covering index
-- (broad_logs_delivery_outcome, delivery_engagement_clicks), so no table row is read. delivered
-- is the total minus the other statuses (a closed set, checked by the schema): the small ranges
-- are counted and the large one is not walked twice.
-- Opens, clicks and complaints count delivered recipients only: every rate divides by delivered,
-- so its numerator must not hold a recipient outside it. Events of the others (a message bounced
-- later by a DSN after a scanner fetched its pixel; a token used for a message that never left)
-- stay recorded, and are subtracted here from the small ranges of the not-delivered statuses.
-- MATERIALIZED: PostgreSQL would otherwise inline the counts into every expression using them.
WITH logs AS MATERIALIZED (
    SELECT
        (SELECT COUNT(*) FROM broad_logs WHERE delivery_id = :delivery_id) AS total,
        (SELECT COUNT(*) FROM broad_logs WHERE delivery_id = :delivery_id AND status = 'bounced') AS bounces,
        (SELECT COUNT(*) FROM broad_logs
         WHERE delivery_id = :delivery_id AND status = 'bounced' AND failure_type = 'hard') AS hard_bounces,
        (SELECT COUNT(*) FROM broad_logs
         WHERE delivery_id = :delivery_id AND status = 'bounced' AND failure_type = 'soft') AS soft_bounces,
        (SELECT COUNT(*) FROM broad_logs WHERE delivery_id = :delivery_id AND status = 'failed') AS errors,
        (SELECT COUNT(*) FROM broad_logs WHERE delivery_id = :delivery_id AND status = 'ignored') AS ignored,
        (SELECT COUNT(*) FROM broad_logs WHERE delivery_id = :delivery_id AND status = 'cancelled') AS cancelled
),
counts AS MATERIALIZED (
    SELECT total - bounces - errors - ignored - cancelled AS delivered,
           bounces, hard_bounces, soft_bounces, errors, ignored, cancelled
    FROM logs
),
targets AS (
    -- The audience is frozen when the delivery is prepared, and target_count counted it then.
    SELECT COALESCE(
        (SELECT target_count FROM deliveries WHERE id = :delivery_id),
        (SELECT COUNT(*) FROM delivery_targets WHERE delivery_id = :delivery_id)
    ) AS to_deliver
),
engagement AS MATERIALIZED (
    -- Every engagement row is an opener, and a clicker exactly when clicks > 0 (schema rules).
    SELECT
        (SELECT COUNT(*) FROM delivery_engagement WHERE delivery_id = :delivery_id) AS unique_opens,
        (SELECT COUNT(*) FROM delivery_engagement WHERE delivery_id = :delivery_id AND clicks > 0) AS unique_clicks,
        (SELECT COALESCE(SUM(clicks), 0) FROM delivery_engagement
         WHERE delivery_id = :delivery_id AND clicks > 0) AS clicks,
        -- The same without the opens and clicks machines made (tracking_logs.machine).
        (SELECT COUNT(*) FROM delivery_engagement
         WHERE delivery_id = :delivery_id AND first_human_open_at IS NOT NULL) AS human_unique_opens,
        (SELECT COUNT(*) FROM delivery_engagement
         WHERE delivery_id = :delivery_id AND first_human_click_at IS NOT NULL) AS human_unique_clicks,
        (SELECT COALESCE(SUM(human_clicks), 0) FROM delivery_engagement
         WHERE delivery_id = :delivery_id AND human_clicks > 0) AS human_clicks
),
undelivered AS MATERIALIZED (
    -- The engagement of recipients whose message was not delivered: every status but 'sent'.
    SELECT COUNT(*) AS unique_opens,
           COUNT(CASE WHEN e.clicks > 0 THEN 1 END) AS unique_clicks,
           COALESCE(SUM(e.clicks), 0) AS clicks,
           COUNT(e.first_human_open_at) AS human_unique_opens,
           COUNT(e.first_human_click_at) AS human_unique_clicks,
           COALESCE(SUM(e.human_clicks), 0) AS human_clicks
    -- CROSS JOIN: SQLite takes the tables in the order written; the few not-delivered rows first.
    FROM broad_logs b
    CROSS JOIN delivery_engagement e
    WHERE e.delivery_id = b.delivery_id AND e.profile_id = b.profile_id
      AND b.delivery_id = :delivery_id AND b.status IN ('bounced', 'failed', 'ignored', 'cancelled')
),
delivered_engagement AS MATERIALIZED (
    SELECT engagement.unique_opens - undelivered.unique_opens AS unique_opens,
           engagement.unique_clicks - undelivered.unique_clicks AS unique_clicks,
           engagement.clicks - undelivered.clicks AS clicks,
           engagement.human_unique_opens - undelivered.human_unique_opens AS human_unique_opens,
           engagement.human_unique_clicks - undelivered.human_unique_clicks AS human_unique_clicks,
           engagement.human_clicks - undelivered.human_clicks AS human_clicks
    FROM engagement, undelivered
),
complaints AS MATERIALIZED (
    -- At most one complaint event per recipient (unique index tracking_logs_one_complaint), of
    -- delivered recipients only.
    SELECT COUNT(*) AS complaints
    FROM tracking_logs l
    WHERE l.delivery_id = :delivery_id AND l.event_type = 'complaint'
      AND l.profile_id NOT IN (
          SELECT b.profile_id FROM broad_logs b
          WHERE b.delivery_id = :delivery_id AND b.status IN ('bounced', 'failed', 'ignored', 'cancelled'))
)
SELECT
    targets.to_deliver,
    counts.delivered,
    counts.bounces + counts.errors AS bounces_errors,
    counts.hard_bounces,
    counts.soft_bounces,
    counts.errors,
    counts.ignored,
    counts.cancelled,
    counts.delivered + counts.bounces + counts.errors AS processed,
    CAST(counts.delivered AS DOUBLE PRECISION)
        / NULLIF(counts.delivered + counts.bounces + counts.errors, 0) AS delivered_rate,
    CAST(counts.bounces + counts.errors AS DOUBLE PRECISION)
        / NULLIF(counts.delivered + counts.bounces + counts.errors, 0) AS bounce_error_rate,
    delivered_engagement.unique_opens,
    CAST(delivered_engagement.unique_opens AS DOUBLE PRECISION) / NULLIF(counts.delivered, 0) AS open_rate,
    delivered_engagement.unique_clicks,
    delivered_engagement.clicks,
    CAST(delivered_engagement.unique_clicks AS DOUBLE PRECISION) / NULLIF(counts.delivered, 0) AS click_through_rate,
    delivered_engagement.human_unique_opens,
    CAST(delivered_engagement.human_unique_opens AS DOUBLE PRECISION) / NULLIF(counts.delivered, 0)
        AS human_open_rate,
    delivered_engagement.human_unique_clicks,
    delivered_engagement.human_clicks,
    CAST(delivered_engagement.human_unique_clicks AS DOUBLE PRECISION) / NULLIF(counts.delivered, 0)
        AS human_click_through_rate,
    complaints.complaints,
    CAST(complaints.complaints AS DOUBLE PRECISION) / NULLIF(counts.delivered, 0) AS complaint_rate
FROM counts, targets, delivered_engagement, complaints
