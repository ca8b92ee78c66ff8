SELECT c.id, l.signature, l.request_id, l.client_id, l.subject, l.requested_at, l.expires_at, l.active FROM hydra_client c,
  LATERAL (SELECT signature, request_id, client_id, subject, requested_at, expires_at, active FROM hydra_oauth2_access a WHERE a.client_id = c.id ORDER BY a.signature LIMIT 1) l;
