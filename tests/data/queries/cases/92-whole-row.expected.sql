SELECT row_to_json(c.*) AS doc FROM hydra_client c WHERE c.id = 'c1';
