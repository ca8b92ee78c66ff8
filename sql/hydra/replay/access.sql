-- Replay of hydra_oauth2_access events captured on blue (Hydra 1.x) onto green (Hydra 2.x schema).
-- 1.x revokes an access token by DELETE ... WHERE request_id (token revocation, refresh rotation, consent
-- revocation by cascade): each deleted row is one event, deleted here by its key. Tokens issued on blue after
-- the snapshot are inserted, with the one column 2.x added that 1.x does not write (nid: the one network).
-- A token green no longer holds (quarantined, or already deleted) is never brought back by a delete, and an
-- insert never overwrites (ON CONFLICT DO NOTHING).
INSERT INTO hydra_oauth2_access (signature, nid, request_id, requested_at, client_id, scope, granted_scope, form_data,
    session_data, subject, active, requested_audience, granted_audience, challenge_id)
SELECT :new.signature, n.id, :new.request_id, :new.requested_at::timestamp, :new.client_id, :new.scope,
       :new.granted_scope, :new.form_data, :new.session_data, :new.subject, :new.active::boolean,
       :new.requested_audience, :new.granted_audience, :new.challenge_id
FROM networks n WHERE :_op = 'insert'
ON CONFLICT (signature) DO NOTHING;
DELETE FROM hydra_oauth2_access WHERE signature = :old.signature AND :_op = 'delete';
