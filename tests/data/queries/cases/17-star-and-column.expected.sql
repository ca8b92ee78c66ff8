SELECT c.id, c.client_name, c.created_at, c."Owner", c."select", a.signature FROM hydra_client c JOIN hydra_oauth2_access a ON a.client_id = c.id;
