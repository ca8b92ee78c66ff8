SELECT * FROM hydra_client, audit.hydra_client WHERE public.hydra_client.id = audit.hydra_client.id;
