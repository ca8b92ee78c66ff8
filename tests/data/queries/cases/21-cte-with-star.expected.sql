WITH c AS (SELECT id, client_name, created_at, "Owner", "select" FROM hydra_client WHERE "select" > 0)
SELECT id, client_name, created_at, "Owner", "select" FROM c;
