SELECT c.id, l.* FROM hydra_client c,
  LATERAL (SELECT * FROM hydra_oauth2_access a WHERE a.client_id = c.id ORDER BY a.signature LIMIT 1) l;
