SELECT audit.events.* FROM audit.events WHERE kind = 'login';
