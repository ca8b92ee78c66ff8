-- The schema the golden query corpus is expanded against (offline, as a schema file) and run
-- against (tests/func/test_queries_corpus.py loads it, with data.sql, into a real database).
CREATE TABLE hydra_client (
    id          text PRIMARY KEY,
    client_name text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00',
    "Owner"     text,
    "select"    integer NOT NULL DEFAULT 0
);

CREATE TABLE hydra_oauth2_access (
    signature    text PRIMARY KEY,
    request_id   text NOT NULL,
    client_id    text NOT NULL REFERENCES hydra_client (id),
    subject      text NOT NULL DEFAULT '',
    requested_at timestamptz NOT NULL,
    expires_at   timestamptz,
    active       boolean NOT NULL DEFAULT true
);

CREATE TABLE hydra_oauth2_refresh (LIKE hydra_oauth2_access INCLUDING ALL);

CREATE TABLE hydra_oauth2_authentication_session (
    id               text PRIMARY KEY,
    subject          text NOT NULL,
    authenticated_at timestamptz,
    remember         boolean NOT NULL DEFAULT false
);

CREATE SCHEMA audit;
CREATE TABLE audit.events (id bigint PRIMARY KEY, client_id text, kind text, at timestamptz);
-- the same table name in another schema
CREATE TABLE audit.hydra_client (id text PRIMARY KEY, note text);

CREATE TABLE "Mixed Case" ("Id" integer, "Value Text" text);

CREATE TABLE tree (id integer PRIMARY KEY, parent_id integer, label text);

-- a column added after the table was created, and one dropped
ALTER TABLE tree ADD COLUMN depth_hint integer;
ALTER TABLE tree ADD COLUMN scratch text;
ALTER TABLE tree DROP COLUMN scratch;

CREATE VIEW active_access AS
    SELECT a.signature, a.client_id, c.client_name AS name
    FROM hydra_oauth2_access a JOIN hydra_client c ON c.id = a.client_id
    WHERE a.active;

CREATE VIEW client_overview AS SELECT c.*, 1 AS one FROM hydra_client c;
