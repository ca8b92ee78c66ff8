-- Replay of hydra_oauth2_refresh events captured on blue (Hydra 1.x) onto green (Hydra 2.x schema).
-- 1.x revokes a refresh token by flipping it inactive (UPDATE ... SET active = false WHERE request_id): the
-- flip is replayed by key. Refresh tokens issued on blue after the snapshot (rotation) are inserted with nid;
-- rows deleted on blue (consent revocation cascades) are deleted.
INSERT INTO hydra_oauth2_refresh (signature, nid, request_id, requested_at, client_id, scope, granted_scope, form_data,
    session_data, subject, active, requested_audience, granted_audience, challenge_id)
SELECT :new.signature, n.id, :new.request_id, :new.requested_at::timestamp, :new.client_id, :new.scope,
       :new.granted_scope, :new.form_data, :new.session_data, :new.subject, :new.active::boolean,
       :new.requested_audience, :new.granted_audience, :new.challenge_id
FROM networks n WHERE :_op = 'insert'
ON CONFLICT (signature) DO NOTHING;
UPDATE hydra_oauth2_refresh SET active = :new.active::boolean
WHERE signature = :new.signature AND :_op = 'update' AND active IS DISTINCT FROM :new.active::boolean;
DELETE FROM hydra_oauth2_refresh WHERE signature = :old.signature AND :_op = 'delete';
