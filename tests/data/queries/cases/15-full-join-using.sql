SELECT *
FROM hydra_client c
FULL JOIN audit.hydra_client ac USING (id);
