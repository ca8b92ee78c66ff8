SELECT DISTINCT ON (client_id) signature, request_id, client_id, subject, requested_at, expires_at, active FROM hydra_oauth2_access ORDER BY client_id, signature;
