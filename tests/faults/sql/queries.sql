-- The old application's queries, with explicit column lists.
SELECT signature, request_id, client_id, subject, expires_at, active FROM access_tokens WHERE signature = $1;
SELECT signature, client_id, active FROM refresh_tokens WHERE request_id = $1;
SELECT count(*) FROM access_tokens WHERE client_id = $1 AND NOT active;
