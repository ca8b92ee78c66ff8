SELECT * FROM hydra_oauth2_access EXCEPT SELECT * FROM hydra_oauth2_refresh;
