SELECT * FROM hydra_client;
