SELECT signature, request_id, client_id, subject, requested_at, expires_at, active FROM hydra_oauth2_access WHERE client_id = 'c1'
UNION ALL
SELECT signature, request_id, client_id, subject, requested_at, expires_at, active FROM hydra_oauth2_refresh;
