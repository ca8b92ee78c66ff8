INSERT INTO hydra_oauth2_refresh SELECT signature, request_id, client_id, subject, requested_at, expires_at, active FROM hydra_oauth2_access WHERE signature = 'a3' RETURNING signature;
