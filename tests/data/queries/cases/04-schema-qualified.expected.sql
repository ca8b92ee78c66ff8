SELECT id, client_id, kind, at FROM audit.events ORDER BY id;
