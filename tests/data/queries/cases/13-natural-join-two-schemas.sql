SELECT * FROM hydra_client NATURAL JOIN audit.hydra_client;
