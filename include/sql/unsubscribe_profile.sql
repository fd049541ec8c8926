-- An unsubscribed profile is blocklisted: no later preparation targets it.
UPDATE profiles SET blocklisted = TRUE WHERE id = :profile_id
