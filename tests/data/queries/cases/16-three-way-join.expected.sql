SELECT signature, c.id, c.client_name, c.created_at, c."Owner", c."select", a.request_id, a.client_id, a.subject, a.requested_at, a.expires_at, a.active, r.request_id, r.client_id, r.subject, r.requested_at, r.expires_at, r.active FROM hydra_client c
  JOIN hydra_oauth2_access a ON a.client_id = c.id
  LEFT JOIN hydra_oauth2_refresh r USING (signature)
WHERE c.id = 'c2';
