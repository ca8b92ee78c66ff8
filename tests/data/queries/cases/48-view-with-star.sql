SELECT o.* FROM client_overview o ORDER BY o.id;
