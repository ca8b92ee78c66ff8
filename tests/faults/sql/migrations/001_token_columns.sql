-- Hydra 2.x style columns: why a token expires, and how many revocations green applied to a refresh token
-- (the replay increments it: an event replayed twice would show as 2).
ALTER TABLE access_tokens ADD COLUMN expires_reason text NOT NULL DEFAULT 'ttl';
ALTER TABLE refresh_tokens ADD COLUMN revocations int NOT NULL DEFAULT 0;
