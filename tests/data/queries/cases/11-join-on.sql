SELECT * FROM hydra_oauth2_access a JOIN hydra_client c ON c.id = a.client_id WHERE a.subject = 'user-1';
