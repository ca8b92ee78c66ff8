WITH recent AS (
  SELECT signature, client_id FROM hydra_oauth2_access WHERE active
)
SELECT * FROM recent;
