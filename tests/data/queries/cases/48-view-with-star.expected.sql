SELECT o.id, o.client_name, o.created_at, o."Owner", o."select", o.one FROM client_overview o ORDER BY o.id;
