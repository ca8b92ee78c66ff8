WITH RECURSIVE up AS (
  SELECT id, parent_id, label, 0 AS level FROM tree WHERE id = 3
  UNION ALL
  SELECT t.id, t.parent_id, t.label, up.level + 1 FROM tree t JOIN up ON t.id = up.parent_id
)
SELECT id, parent_id, label, level FROM up;
