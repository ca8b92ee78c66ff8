SELECT * FROM hydra_oauth2_access WHERE signature = 'a2' FOR UPDATE;
