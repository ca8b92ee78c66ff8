-- Hydra 2.x style: record which refresh token an access token belongs to, and why it expires.
ALTER TABLE hydra_oauth2_access ADD COLUMN IF NOT EXISTS challenge_id text;
ALTER TABLE hydra_oauth2_access ADD COLUMN IF NOT EXISTS expires_reason text NOT NULL DEFAULT 'ttl';
