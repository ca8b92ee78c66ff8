-- Replay of a revocation captured on blue's hydra_oauth2_access (an `active` flip to false) onto green:
-- flip the same token there. An UPDATE, not an upsert: a token green no longer holds (quarantined by a
-- migration's cleanup, say) is never brought back. Named parameters come from the event (:signature is
-- NEW.signature). Used by plans/capture-replay.yaml.
UPDATE hydra_oauth2_access SET active = false WHERE signature = :signature AND active;
