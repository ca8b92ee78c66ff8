SELECT signature FROM hydra_oauth2_access a
WHERE EXISTS (SELECT * FROM hydra_client c WHERE c.id = a.client_id AND c."select" > 0);
