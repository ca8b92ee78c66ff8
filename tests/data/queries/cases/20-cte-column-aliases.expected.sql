WITH r(sig, cid) AS (SELECT signature, client_id, subject FROM hydra_oauth2_access)
SELECT sig, cid, subject FROM r WHERE cid = 'c1';
