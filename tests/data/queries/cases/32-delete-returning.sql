DELETE FROM hydra_oauth2_authentication_session WHERE id = 's1' RETURNING *;
