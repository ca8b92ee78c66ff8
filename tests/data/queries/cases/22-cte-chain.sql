WITH a AS (SELECT id, client_name FROM hydra_client),
     b AS (SELECT a.*, length(client_name) AS len FROM a)
SELECT * FROM b;
