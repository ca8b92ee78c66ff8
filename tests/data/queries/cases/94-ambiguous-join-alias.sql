SELECT * FROM (hydra_oauth2_access a JOIN hydra_oauth2_refresh r ON r.signature = a.signature) j;
