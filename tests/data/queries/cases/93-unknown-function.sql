SELECT * FROM pg_catalog.pg_options_to_table(ARRAY['fillfactor=70']);
