WITH a AS (SELECT id, client_name FROM hydra_client),
     b AS (SELECT a.id, a.client_name, length(client_name) AS len FROM a)
SELECT id, client_name, len FROM b;
