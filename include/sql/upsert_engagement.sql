INSERT INTO delivery_engagement (delivery_id, profile_id, first_open_at, first_click_at, clicks,
                                 first_human_open_at, first_human_click_at, human_clicks, updated_at)
VALUES (:delivery_id, :profile_id, :first_open_at, :first_click_at, :clicks,
        :first_human_open_at, :first_human_click_at, :human_clicks, :now)
ON CONFLICT (delivery_id, profile_id) DO UPDATE SET
    first_open_at = excluded.first_open_at,
    first_click_at = excluded.first_click_at,
    clicks = excluded.clicks,
    first_human_open_at = excluded.first_human_open_at,
    first_human_click_at = excluded.first_human_click_at,
    human_clicks = excluded.human_clicks,
    updated_at = excluded.updated_at
