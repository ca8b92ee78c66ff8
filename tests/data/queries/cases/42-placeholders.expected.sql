SELECT signature, request_id, client_id, subject, requested_at, expires_at, active FROM hydra_oauth2_access WHERE client_id = %s AND subject = %(subject)s;
SELECT signature, request_id, client_id, subject, requested_at, expires_at, active FROM hydra_oauth2_access WHERE signature = :signature OR request_id = :signature;
SELECT signature, request_id, client_id, subject, requested_at, expires_at, active FROM hydra_oauth2_access WHERE signature = $1;
