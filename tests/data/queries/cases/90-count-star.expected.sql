SELECT count(*) FROM hydra_client;
