SELECT DISTINCT ON (client_id) * FROM hydra_oauth2_access ORDER BY client_id, signature;
