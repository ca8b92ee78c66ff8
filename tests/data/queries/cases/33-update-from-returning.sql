UPDATE hydra_oauth2_access a SET active = false
FROM hydra_client c
WHERE c.id = a.client_id AND c.client_name = 'Beta'
RETURNING *;
