(SELECT * FROM hydra_oauth2_access WHERE active ORDER BY signature LIMIT 2)
UNION
(SELECT * FROM hydra_oauth2_refresh)
ORDER BY 1;
