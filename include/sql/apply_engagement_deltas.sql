-- Add one delivery's engagement changes to its KPI row and recompute its rates, all events and
-- people only side by side (right-hand sides see the values before the update, on both
-- PostgreSQL and SQLite; a row written before the human columns existed has them NULL).
UPDATE delivery_kpis
SET unique_opens = unique_opens + :unique_opens,
    unique_clicks = unique_clicks + :unique_clicks,
    clicks = clicks + :clicks,
    open_rate = CAST(unique_opens + :unique_opens AS DOUBLE PRECISION) / NULLIF(delivered, 0),
    click_through_rate = CAST(unique_clicks + :unique_clicks AS DOUBLE PRECISION) / NULLIF(delivered, 0),
    human_unique_opens = COALESCE(human_unique_opens, 0) + :human_unique_opens,
    human_unique_clicks = COALESCE(human_unique_clicks, 0) + :human_unique_clicks,
    human_clicks = COALESCE(human_clicks, 0) + :human_clicks,
    human_open_rate = CAST(COALESCE(human_unique_opens, 0) + :human_unique_opens AS DOUBLE PRECISION)
        / NULLIF(delivered, 0),
    human_click_through_rate = CAST(COALESCE(human_unique_clicks, 0) + :human_unique_clicks AS DOUBLE PRECISION)
        / NULLIF(delivered, 0),
    rates_updated_at = :now
WHERE delivery_id = :delivery_id
