WITH c AS (SELECT * FROM hydra_client WHERE "select" > 0)
SELECT * FROM c;
