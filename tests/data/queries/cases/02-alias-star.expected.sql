SELECT c.id, c.client_name, c.created_at, c."Owner", c."select" FROM hydra_client c;
