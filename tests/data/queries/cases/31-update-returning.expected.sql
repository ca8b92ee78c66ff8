UPDATE hydra_oauth2_access SET active = false WHERE signature = 'a1' RETURNING signature, request_id, client_id, subject, requested_at, expires_at, active;
