SELECT c.* FROM hydra_client c;
