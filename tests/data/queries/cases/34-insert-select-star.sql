INSERT INTO hydra_oauth2_refresh SELECT * FROM hydra_oauth2_access WHERE signature = 'a3' RETURNING signature;
