SELECT * FROM active_access WHERE client_id = 'c1';
