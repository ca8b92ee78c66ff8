INSERT INTO hydra_client AS c (id, client_name) VALUES ('c1', 'Alpha again')
ON CONFLICT (id) DO UPDATE SET client_name = excluded.client_name
RETURNING *;
