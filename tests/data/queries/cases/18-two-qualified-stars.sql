SELECT a.*, c.* FROM hydra_oauth2_access a, hydra_client c WHERE c.id = a.client_id AND a.active;
