SELECT c.id, c.client_name, c.created_at, c."Owner", c."select", count(a.signature) AS tokens
FROM hydra_client c LEFT JOIN hydra_oauth2_access a ON a.client_id = c.id
GROUP BY c.id;
