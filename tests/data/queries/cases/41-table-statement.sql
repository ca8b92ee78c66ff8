TABLE hydra_client;
