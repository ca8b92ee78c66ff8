"""SQL analysis on the real Postgres grammar (pglast / libpg_query): splitting, parsing, rewriting."""
