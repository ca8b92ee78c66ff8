SELECT audit.events.id, audit.events.client_id, audit.events.kind, audit.events.at FROM audit.events WHERE kind = 'login';
