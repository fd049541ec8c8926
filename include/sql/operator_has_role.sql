-- 1 when the operator with this login holds the role, no row otherwise.
SELECT 1 AS has_role
FROM operators o
JOIN operator_roles r ON r.operator_id = o.id
WHERE o.login = :login AND r.role = :role
