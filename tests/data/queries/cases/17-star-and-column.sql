SELECT c.*, a.signature FROM hydra_client c JOIN hydra_oauth2_access a ON a.client_id = c.id;
