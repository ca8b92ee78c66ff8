SELECT signature, a.request_id, a.client_id, a.subject, a.requested_at, a.expires_at, a.active, r.request_id, r.client_id, r.subject, r.requested_at, r.expires_at, r.active, e.id, e.client_id, e.kind, e.at FROM hydra_oauth2_access a JOIN hydra_oauth2_refresh r USING (signature) AS j, audit.events e
WHERE e.client_id = a.client_id;
