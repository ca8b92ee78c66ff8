SELECT id, (SELECT max FROM (SELECT max(signature) FROM hydra_oauth2_access a WHERE a.client_id = c.id) m) AS last
FROM hydra_client c;
