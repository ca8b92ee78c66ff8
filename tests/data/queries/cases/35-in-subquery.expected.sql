SELECT signature FROM hydra_oauth2_access
WHERE client_id IN (SELECT id FROM (SELECT id FROM hydra_client WHERE "select" = 0) z);
