INSERT INTO hydra_client (id, client_name) VALUES ('c9', 'New') RETURNING id, client_name, created_at, "Owner", "select";
