SELECT signature, client_id, name FROM active_access WHERE client_id = 'c1';
