SELECT signature FROM hydra_oauth2_access
WHERE client_id IN (SELECT * FROM (SELECT id FROM hydra_client WHERE "select" = 0) z);
