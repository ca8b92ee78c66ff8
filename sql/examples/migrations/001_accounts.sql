-- Example migrations for plans/migrate-*.yaml: a shop's accounts and orders.
CREATE TABLE accounts (
    id bigint PRIMARY KEY,
    email text,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id bigint PRIMARY KEY,
    account_id bigint,
    total numeric(12, 2) NOT NULL DEFAULT 0,
    status text
);
