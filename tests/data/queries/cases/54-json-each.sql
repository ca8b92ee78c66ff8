SELECT * FROM jsonb_each('{"a": 1, "b": [2]}'::jsonb) AS kv;
