/* the janitor */
SELECT signature, request_id, client_id, subject, requested_at, expires_at, active FROM hydra_oauth2_access WHERE NOT active;

-- and the sessions
SELECT s.id, s.subject, s.authenticated_at, s.remember FROM hydra_oauth2_authentication_session s;
