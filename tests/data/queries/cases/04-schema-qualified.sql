SELECT * FROM audit.events ORDER BY id;
