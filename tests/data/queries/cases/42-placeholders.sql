SELECT * FROM hydra_oauth2_access WHERE client_id = %s AND subject = %(subject)s;
SELECT * FROM hydra_oauth2_access WHERE signature = :signature OR request_id = :signature;
SELECT * FROM hydra_oauth2_access WHERE signature = $1;
