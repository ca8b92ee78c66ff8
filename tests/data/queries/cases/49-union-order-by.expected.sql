(SELECT signature, request_id, client_id, subject, requested_at, expires_at, active FROM hydra_oauth2_access WHERE active ORDER BY signature LIMIT 2)
UNION
(SELECT signature, request_id, client_id, subject, requested_at, expires_at, active FROM hydra_oauth2_refresh)
ORDER BY 1;
