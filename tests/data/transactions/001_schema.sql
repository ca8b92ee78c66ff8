-- A shop's schema and data, in one block: the index on the table created here stays in it.
BEGIN;
CREATE TABLE accounts (
    id bigint PRIMARY KEY,
    email text CONSTRAINT accounts_email_key UNIQUE,
    legacy_flag boolean
);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    account_id bigint,
    total numeric(12, 2) NOT NULL DEFAULT 0,
    status text,
    created_at timestamptz NOT NULL DEFAULT '2024-01-01'
);
CREATE INDEX orders_account_idx ON orders (account_id);
INSERT INTO accounts SELECT g, 'user' || g || '@example.com', g % 3 = 0 FROM generate_series(1, 3000) g;
INSERT INTO orders SELECT g, 1 + g % 3000, g % 50, CASE WHEN g % 4 = 0 THEN 'paid' END, '2024-01-01'
FROM generate_series(1, 6000) g;
COMMIT;
