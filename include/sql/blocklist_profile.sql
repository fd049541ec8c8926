-- A recipient who reported a campaign mail as spam is blocklisted: no later preparation targets it.
UPDATE profiles SET blocklisted = TRUE WHERE id = :profile_id AND blocklisted = FALSE
