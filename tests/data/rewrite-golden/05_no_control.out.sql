SET lock_timeout = '2s';
-- bluegreen rewrite: run this file as it is (psql -v ON_ERROR_STOP=1 -f FILE): each BEGIN ... COMMIT is one transaction, every other statement runs alone
BEGIN;
-- popx and migrate run this file as one transaction
CREATE TABLE order_audit (id bigint, order_id bigint REFERENCES orders (id));
CREATE INDEX order_audit_order_idx ON order_audit (order_id);
COMMIT;
-- bluegreen: the file's transaction is split here: the SHARE ROW EXCLUSIVE lock on orders taken at line 2 would be held through the write of order_audit at line 4 (atomicity changed)
BEGIN;
INSERT INTO order_audit SELECT id, id FROM orders;
UPDATE accounts SET legacy = false WHERE legacy;
COMMIT;
-- bluegreen: the file's transaction is split here: the write of order_audit at line 4 would hold its row locks while line 6 waits for ACCESS EXCLUSIVE on accounts (atomicity changed)
ALTER TABLE accounts DROP COLUMN legacy;
-- bluegreen: the file's transaction is split here: the ACCESS EXCLUSIVE lock on accounts taken at line 6 would be held through the write of orders at line 7 (atomicity changed)
DELETE FROM orders WHERE total < 0;
-- bluegreen: the file's transaction is split here: the write of orders at line 7 would hold its row locks while line 8 waits for ACCESS EXCLUSIVE on orders (atomicity changed)
ALTER TABLE orders ADD CONSTRAINT orders_total_check CHECK (total >= 0) NOT VALID;
-- bluegreen: VALIDATE CONSTRAINT runs alone, once the NOT VALID constraint is committed: it runs outside the file's transaction (atomicity changed)
ALTER TABLE orders VALIDATE CONSTRAINT orders_total_check;
