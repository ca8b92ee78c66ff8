DROP INDEX orders_account_id_idx;
CREATE INDEX orders_account_status_idx ON orders (account_id, status);
