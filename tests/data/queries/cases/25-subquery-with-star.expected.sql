SELECT s.id, s.client_name, s.created_at, s."Owner", s."select" FROM (SELECT id, client_name, created_at, "Owner", "select" FROM hydra_client WHERE "select" > 0) AS s;
