UPDATE hydra_oauth2_access a SET active = false
FROM hydra_client c
WHERE c.id = a.client_id AND c.client_name = 'Beta'
RETURNING a.signature, a.request_id, a.client_id, a.subject, a.requested_at, a.expires_at, a.active, c.id, c.client_name, c.created_at, c."Owner", c."select";
