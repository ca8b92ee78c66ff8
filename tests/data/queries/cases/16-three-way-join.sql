SELECT * FROM hydra_client c
  JOIN hydra_oauth2_access a ON a.client_id = c.id
  LEFT JOIN hydra_oauth2_refresh r USING (signature)
WHERE c.id = 'c2';
