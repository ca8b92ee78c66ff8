-- Written the usual way: every statement below locks a live table for as long as it scans or builds.
CREATE INDEX orders_account_id_idx ON orders (account_id);

ALTER TABLE orders ADD CONSTRAINT orders_account_id_fkey
    FOREIGN KEY (account_id) REFERENCES accounts (id) ON DELETE CASCADE;

ALTER TABLE orders ALTER COLUMN status SET NOT NULL;

ALTER TABLE accounts ADD CONSTRAINT accounts_email_key UNIQUE (email);

ALTER TABLE orders ADD CONSTRAINT orders_total_positive CHECK (total >= 0);
