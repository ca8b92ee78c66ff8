SELECT C.id, C.client_name, C.created_at, C."Owner", C."select" FROM hydra_client C WHERE C.ID = 'c1';
