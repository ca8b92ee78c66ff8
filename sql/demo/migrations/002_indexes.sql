-- Built outside a transaction (CONCURRENTLY): green takes traffic reads while it builds.
CREATE INDEX CONCURRENTLY IF NOT EXISTS hydra_oauth2_access_request_id_idx ON hydra_oauth2_access (request_id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS hydra_oauth2_refresh_request_id_idx ON hydra_oauth2_refresh (request_id);
