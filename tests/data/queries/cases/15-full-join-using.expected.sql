SELECT id, c.client_name, c.created_at, c."Owner", c."select", ac.note
FROM hydra_client c
FULL JOIN audit.hydra_client ac USING (id);
