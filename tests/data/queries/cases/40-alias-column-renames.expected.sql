SELECT cid, cname, created_at, "Owner", "select" FROM hydra_client AS c(cid, cname) WHERE cid = 'c1';
