SELECT * FROM hydra_oauth2_access a JOIN hydra_oauth2_refresh r USING (signature) AS j, audit.events e
WHERE e.client_id = a.client_id;
