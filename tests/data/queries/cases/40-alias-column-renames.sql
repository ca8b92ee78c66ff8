SELECT * FROM hydra_client AS c(cid, cname) WHERE cid = 'c1';
