-- Deterministic rows for the corpus (no now(), no random()).
INSERT INTO hydra_client (id, client_name, "Owner", "select") VALUES
    ('c1', 'Alpha', 'ann', 1), ('c2', 'Beta', NULL, 0), ('c3', 'Gamma', 'bob', 2);
INSERT INTO hydra_oauth2_access (signature, request_id, client_id, subject, requested_at, expires_at, active)
SELECT 'a' || g, 'r' || (g % 4), 'c' || (1 + g % 3), 'user-' || (g % 5),
       '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 hour',
       '2024-01-02 00:00:00+00'::timestamptz + g * interval '1 hour', g % 3 <> 0
FROM generate_series(1, 12) g;
INSERT INTO hydra_oauth2_refresh SELECT * FROM hydra_oauth2_access WHERE signature IN ('a1', 'a2', 'a5');
UPDATE hydra_oauth2_refresh SET signature = 'f' || substr(signature, 2), active = NOT active
WHERE signature = 'a5';
INSERT INTO hydra_oauth2_authentication_session VALUES
    ('s1', 'user-1', '2024-01-01 10:00:00+00', true), ('s2', 'user-2', NULL, false);
INSERT INTO audit.events VALUES
    (1, 'c1', 'login', '2024-01-01 01:00:00+00'), (2, 'c2', 'logout', '2024-01-01 02:00:00+00'),
    (3, 'c9', 'login', '2024-01-01 03:00:00+00');
INSERT INTO audit.hydra_client VALUES ('c1', 'first'), ('c4', 'orphan');
INSERT INTO "Mixed Case" VALUES (1, 'one'), (2, 'two');
INSERT INTO tree (id, parent_id, label, depth_hint) VALUES (1, NULL, 'root', 0), (2, 1, 'child', 1), (3, 2, 'leaf', 2);
