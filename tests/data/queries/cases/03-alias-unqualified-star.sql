SELECT * FROM hydra_client AS c WHERE c."select" > 0;
