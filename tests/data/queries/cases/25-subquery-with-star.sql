SELECT s.* FROM (SELECT * FROM hydra_client WHERE "select" > 0) AS s;
