-- The demo application's queries (Hydra 1.x style), as `bluegreen rewrite-queries --dsn <blue>` leaves
-- them: explicit column lists where the old code said SELECT *, so a column added on green does not
-- reach it. The check_queries step prepares and plans each of them on green (never runs them) and
-- compares their result columns with blue's. Placeholders in the driver's style are fine.

-- token introspection (was: SELECT * FROM hydra_oauth2_access WHERE signature = $1)
SELECT signature, request_id, client_id, subject, requested_at, expires_at, active, session_data
FROM hydra_oauth2_access WHERE signature = $1;

-- clients a subject authenticated with (was: SELECT DISTINCT c.* ...)
SELECT DISTINCT c.id, c.client_name, c.created_at
FROM hydra_client c JOIN hydra_oauth2_access a ON a.client_id = c.id
WHERE a.subject = %(subject)s AND a.active;

-- revocation by request
UPDATE hydra_oauth2_access SET active = false WHERE request_id = :request_id;

-- refresh token rotation (was: DELETE ... RETURNING *)
DELETE FROM hydra_oauth2_refresh WHERE signature = $1
RETURNING signature, request_id, client_id, subject, requested_at, expires_at, active, session_data;

-- the janitor's count
SELECT count(*) FROM hydra_oauth2_access WHERE client_id = $1 AND NOT active;
