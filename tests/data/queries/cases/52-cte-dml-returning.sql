WITH gone AS (
  DELETE FROM hydra_oauth2_refresh WHERE NOT active RETURNING *
)
SELECT * FROM gone;
