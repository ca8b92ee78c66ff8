SELECT id, client_name, created_at, "Owner", "select" FROM hydra_client WHERE id='c3';
