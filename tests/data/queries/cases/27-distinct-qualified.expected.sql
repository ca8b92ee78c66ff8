SELECT DISTINCT c.id, c.client_name, c.created_at, c."Owner", c."select" FROM hydra_client c
JOIN hydra_oauth2_access a ON a.client_id = c.id
WHERE a.subject = 'user-1';
