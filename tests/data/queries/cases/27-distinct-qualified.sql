SELECT DISTINCT c.* FROM hydra_client c
JOIN hydra_oauth2_access a ON a.client_id = c.id
WHERE a.subject = 'user-1';
