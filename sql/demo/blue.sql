-- The demo's blue database: a small OAuth2 token store shaped like Ory Hydra 1.x
-- (hydra_oauth2_access / hydra_oauth2_refresh), with some data. Loaded by `bluegreen demo`.
CREATE TABLE IF NOT EXISTS hydra_client (
    id         text PRIMARY KEY,
    client_name text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS hydra_oauth2_access (
    signature    text PRIMARY KEY,
    request_id   text NOT NULL,
    client_id    text NOT NULL REFERENCES hydra_client (id),
    subject      text NOT NULL DEFAULT '',
    requested_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    active       boolean NOT NULL DEFAULT true,
    session_data text NOT NULL DEFAULT ''
);

CREATE TABLE IF NOT EXISTS hydra_oauth2_refresh (LIKE hydra_oauth2_access INCLUDING ALL);

INSERT INTO hydra_client (id, client_name)
SELECT 'client-' || g, 'Demo client ' || g FROM generate_series(1, 50) g
ON CONFLICT DO NOTHING;

INSERT INTO hydra_oauth2_access (signature, request_id, client_id, subject, expires_at, active)
SELECT md5('a' || g), md5('r' || g), 'client-' || (1 + g % 50), 'user-' || (g % 997),
       now() + (g % 240) * interval '1 minute', g % 17 <> 0
FROM generate_series(1, 20000) g
ON CONFLICT DO NOTHING;

INSERT INTO hydra_oauth2_refresh (signature, request_id, client_id, subject, expires_at, active)
SELECT md5('f' || g), md5('r' || g), 'client-' || (1 + g % 50), 'user-' || (g % 997),
       now() + interval '30 days', g % 23 <> 0
FROM generate_series(1, 20000) g
ON CONFLICT DO NOTHING;

ANALYZE;
