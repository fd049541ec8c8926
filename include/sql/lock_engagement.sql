-- Taken first in every transaction that changes engagement or the counts derived from it
-- (hourly fold, compute stats, aggregate): the row lock serialises them on PostgreSQL, the
-- write lock does on SQLite, so no two of them ever add the same events.
UPDATE tracking_watermarks SET updated_at = :now WHERE name = 'engagement'
