SELECT * FROM hydra_oauth2_access WHERE client_id = 'c1'
UNION ALL
SELECT * FROM hydra_oauth2_refresh;
