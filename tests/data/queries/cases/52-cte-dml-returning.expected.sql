WITH gone AS (
  DELETE FROM hydra_oauth2_refresh WHERE NOT active RETURNING signature, request_id, client_id, subject, requested_at, expires_at, active
)
SELECT signature, request_id, client_id, subject, requested_at, expires_at, active FROM gone;
