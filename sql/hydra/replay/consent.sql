-- Replay of a consent revocation on blue (Hydra 1.x deletes the hydra_oauth2_consent_request row; its handled
-- row and the tokens issued under it go by ON DELETE CASCADE) onto green (Hydra 2.x: the consent is a
-- hydra_oauth2_flow row, found by consent_challenge_id). Replay runs with triggers and foreign-key actions off
-- (session_replication_role = replica), so the tokens are deleted here explicitly, as 2.x's
-- revokeConsentSession does, before the flow.
DELETE FROM hydra_oauth2_access WHERE challenge_id = :old.challenge;
DELETE FROM hydra_oauth2_refresh WHERE challenge_id = :old.challenge;
DELETE FROM hydra_oauth2_code WHERE challenge_id = :old.challenge;
DELETE FROM hydra_oauth2_oidc WHERE challenge_id = :old.challenge;
DELETE FROM hydra_oauth2_pkce WHERE challenge_id = :old.challenge;
DELETE FROM hydra_oauth2_flow WHERE consent_challenge_id = :old.challenge;
