/* the janitor */
SELECT * FROM hydra_oauth2_access WHERE NOT active;

-- and the sessions
SELECT s.* FROM hydra_oauth2_authentication_session s;
