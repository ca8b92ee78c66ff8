SELECT * FROM hydra_oauth2_access JOIN hydra_oauth2_refresh USING (signature);
