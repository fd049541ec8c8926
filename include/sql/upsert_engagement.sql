INSERT INTO delivery_engagement (delivery_id, profile_id, first_open_at, first_click_at, clicks, updated_at)
VALUES (:delivery_id, :profile_id, :first_open_at, :first_click_at, :clicks, :now)
ON CONFLICT (delivery_id, profile_id) DO UPDATE SET
    first_open_at = excluded.first_open_at,
    first_click_at = excluded.first_click_at,
    clicks = excluded.clicks,
    updated_at = excluded.updated_at
