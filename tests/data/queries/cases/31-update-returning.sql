UPDATE hydra_oauth2_access SET active = false WHERE signature = 'a1' RETURNING *;
