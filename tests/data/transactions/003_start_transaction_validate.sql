START TRANSACTION ISOLATION LEVEL READ COMMITTED;
-- the foreign key is validated in this transaction as written: under SHARE ROW EXCLUSIVE on both tables
ALTER TABLE orders ADD CONSTRAINT orders_account_fk FOREIGN KEY (account_id) REFERENCES accounts (id);
-- already NOT VALID, but validated in the same transaction: the lock is held through the scan
ALTER TABLE orders ADD CONSTRAINT orders_total_check CHECK (total >= 0) NOT VALID;
ALTER TABLE orders VALIDATE CONSTRAINT orders_total_check;
END;
