-- Replay of a revocation captured on blue's hydra_oauth2_refresh (an `active` flip to false) onto green:
-- flip the same refresh token there (see sql/replay_revoke_access.sql).
UPDATE hydra_oauth2_refresh SET active = false WHERE signature = :signature AND active;
