select id, client_name, created_at, "Owner", "select" from HYDRA_CLIENT where ID = 'c2';
