-- Replay of hydra_oauth2_obfuscated_authentication_session changes made on blue (Hydra 1.x) onto green
-- (2.x: the key is (subject, client_id, nid)): a pairwise subject issued on blue during the window is the
-- same one on green, or the client would see its user change identifier at the switch.
INSERT INTO hydra_oauth2_obfuscated_authentication_session (subject, client_id, subject_obfuscated, nid)
SELECT :new.subject, :new.client_id, :new.subject_obfuscated, n.id FROM networks n WHERE :_op IN ('insert', 'update')
ON CONFLICT (subject, client_id, nid) DO UPDATE SET subject_obfuscated = EXCLUDED.subject_obfuscated;
DELETE FROM hydra_oauth2_obfuscated_authentication_session
WHERE subject = :old.subject AND client_id = :old.client_id AND :_op = 'delete';
