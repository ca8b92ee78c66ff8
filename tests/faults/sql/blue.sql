-- The fault suite's blue database: a small token store shaped like Ory Hydra 1.x, with fixed data (no now(),
-- no random()): every fault case starts from exactly the same rows, so green's end state is comparable.
-- Some rows break the constraints the migrations add (orphan tokens, duplicate client emails, empty
-- subjects): the cleanup quarantines them on green.
CREATE TABLE clients (
    id    text PRIMARY KEY,
    name  text NOT NULL,
    email text
);

CREATE TABLE access_tokens (
    signature  text PRIMARY KEY,
    request_id text NOT NULL,
    client_id  text NOT NULL,
    subject    text NOT NULL,
    expires_at timestamptz NOT NULL,
    active     boolean NOT NULL DEFAULT true
);

CREATE TABLE refresh_tokens (
    signature  text PRIMARY KEY,
    request_id text NOT NULL,
    client_id  text NOT NULL,
    subject    text NOT NULL,
    expires_at timestamptz NOT NULL,
    active     boolean NOT NULL DEFAULT true
);

CREATE TABLE audit_log (
    id  bigserial PRIMARY KEY,
    msg text NOT NULL
);

INSERT INTO clients (id, name, email)
SELECT 'client-' || g, 'Client ' || g, 'owner-' || (CASE WHEN g % 20 = 0 THEN g - 1 ELSE g END) || '@example.org'
FROM generate_series(1, 60) g;

-- client ids up to 64: tokens of clients 61..64 are orphans (the foreign key quarantines them)
INSERT INTO access_tokens (signature, request_id, client_id, subject, expires_at, active)
SELECT md5('a' || g), md5('r' || g), 'client-' || (1 + g % 64), CASE WHEN g % 211 = 0 THEN '' ELSE 'user-' || g % 997 END,
       '2031-01-01 00:00:00+00'::timestamptz + (g % 240) * interval '1 minute', g % 17 <> 0
FROM generate_series(1, 6000) g;

INSERT INTO refresh_tokens (signature, request_id, client_id, subject, expires_at, active)
SELECT md5('f' || g), md5('r' || g), 'client-' || (1 + g % 64), 'user-' || g % 997,
       '2031-02-01 00:00:00+00'::timestamptz, g % 23 <> 0
FROM generate_series(1, 6000) g;

INSERT INTO audit_log (msg) SELECT 'event ' || g FROM generate_series(1, 500) g;
ANALYZE;
