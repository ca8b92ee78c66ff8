-- The statements Hydra 2.3.0's token and consent store runs on the same tables (persistence/sql at v2.3.0):
-- they must plan on green once migrated (no baseline: blue has the 1.x schema).
SELECT signature, nid, request_id, requested_at, client_id, scope, granted_scope, requested_audience,
       granted_audience, form_data, subject, active, session_data, challenge_id, expires_at
FROM hydra_oauth2_access WHERE signature = $1 AND nid = $2;
UPDATE hydra_oauth2_refresh SET active = false, first_used_at = now() WHERE signature = $1 AND nid = $2
RETURNING access_token_signature;
DELETE FROM hydra_oauth2_access WHERE request_id = $1 AND nid = $2;
DELETE FROM hydra_oauth2_refresh WHERE request_id = $1 AND nid = $2;
SELECT login_challenge, consent_challenge_id, subject, client_id, state, consent_remember, consent_remember_for,
       granted_scope, requested_at
FROM hydra_oauth2_flow WHERE consent_challenge_id = $1 AND nid = $2;
DELETE FROM hydra_oauth2_flow WHERE consent_challenge_id = ANY($1::text[]) AND nid = $2;
SELECT id, authenticated_at, subject, remember FROM hydra_oauth2_authentication_session WHERE id = $1 AND nid = $2;
SELECT id, client_name, redirect_uris, grant_types, response_types, scope, skip_consent, access_token_strategy
FROM hydra_client WHERE id = $1 AND nid = $2;
