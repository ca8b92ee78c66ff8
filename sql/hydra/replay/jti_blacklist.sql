-- Replay of hydra_oauth2_jti_blacklist changes made on blue (Hydra 1.x) onto green (2.x: the key is
-- (signature, nid)): a JWT id used on blue during the window stays used on green (no replay of a bearer
-- assertion across the switch); a flushed one is flushed there too.
INSERT INTO hydra_oauth2_jti_blacklist (signature, expires_at, nid)
SELECT :new.signature, :new.expires_at::timestamp, n.id FROM networks n WHERE :_op IN ('insert', 'update')
ON CONFLICT (signature, nid) DO UPDATE SET expires_at = EXCLUDED.expires_at;
DELETE FROM hydra_oauth2_jti_blacklist WHERE signature = :old.signature AND :_op = 'delete';
