-- Reserve the next span seconds of a rate-limited delivery's sending (generic cell rate
-- algorithm): from next_at, or from now if next_at has passed; returns the new next_at.
UPDATE delivery_pacing
SET next_at = (CASE WHEN next_at > :now THEN next_at ELSE :now END) + :span
WHERE delivery_id = :delivery_id
RETURNING next_at
