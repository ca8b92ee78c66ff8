-- The statements Hydra 1.x's token store runs (persistence/sql/persister_oauth2.go at v1.11.10, pop's explicit
-- column lists), as the old binaries keep running them through the cutover: they must plan on green (2.x
-- schema) with the result columns blue gives.
SELECT signature, request_id, requested_at, client_id, scope, granted_scope, requested_audience, granted_audience,
       form_data, subject, active, session_data, challenge_id
FROM hydra_oauth2_access WHERE signature = $1;
SELECT signature, request_id, requested_at, client_id, scope, granted_scope, requested_audience, granted_audience,
       form_data, subject, active, session_data, challenge_id
FROM hydra_oauth2_refresh WHERE signature = $1 AND active;
INSERT INTO hydra_oauth2_access (signature, request_id, requested_at, client_id, scope, granted_scope,
    requested_audience, granted_audience, form_data, subject, active, session_data, challenge_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13);
INSERT INTO hydra_oauth2_refresh (signature, request_id, requested_at, client_id, scope, granted_scope,
    requested_audience, granted_audience, form_data, subject, active, session_data, challenge_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13);
DELETE FROM hydra_oauth2_access WHERE request_id = $1;
UPDATE hydra_oauth2_refresh SET active = false WHERE request_id = $1;
DELETE FROM hydra_oauth2_access WHERE signature = $1;
DELETE FROM hydra_oauth2_access WHERE requested_at < $1 AND requested_at < $2;
-- Not here: 1.x's client reads (SELECT redirect_uris, grant_types, ... FROM hydra_client) break on 2.x, which
-- retyped 8 client columns text -> jsonb (20220513000001000000-004); check_queries says so (type change).
-- The 1.x token path never reads them: only the token statements above must survive the cutover.
