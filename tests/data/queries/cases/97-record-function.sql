SELECT * FROM json_populate_record(NULL::hydra_client, '{"id": "x", "select": 3}');
