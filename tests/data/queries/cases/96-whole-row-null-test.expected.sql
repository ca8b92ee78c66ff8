SELECT id FROM hydra_client c WHERE c.* IS NOT NULL;
