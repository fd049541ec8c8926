-- Add one delivery's engagement changes to its KPI row and recompute its two rates
-- (right-hand sides see the values before the update, on both PostgreSQL and SQLite).
UPDATE delivery_kpis
SET unique_opens = unique_opens + :unique_opens,
    unique_clicks = unique_clicks + :unique_clicks,
    clicks = clicks + :clicks,
    open_rate = CAST(unique_opens + :unique_opens AS DOUBLE PRECISION) / NULLIF(delivered, 0),
    click_through_rate = CAST(unique_clicks + :unique_clicks AS DOUBLE PRECISION) / NULLIF(delivered, 0),
    rates_updated_at = :now
WHERE delivery_id = :delivery_id
