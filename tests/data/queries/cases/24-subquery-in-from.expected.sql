SELECT id, name, upper FROM (SELECT id, client_name AS name, upper(client_name) FROM hydra_client) s;
