SELECT * FROM hydra_oauth2_access a LEFT JOIN audit.events e USING (client_id) WHERE a.signature IN ('a1', 'a2');
