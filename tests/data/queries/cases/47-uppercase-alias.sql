SELECT C.* FROM hydra_client C WHERE C.ID = 'c1';
