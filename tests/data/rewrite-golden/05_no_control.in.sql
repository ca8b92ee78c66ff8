-- popx and migrate run this file as one transaction
CREATE TABLE order_audit (id bigint, order_id bigint REFERENCES orders (id));
CREATE INDEX order_audit_order_idx ON order_audit (order_id);
INSERT INTO order_audit SELECT id, id FROM orders;
UPDATE accounts SET legacy = false WHERE legacy;
ALTER TABLE accounts DROP COLUMN legacy;
DELETE FROM orders WHERE total < 0;
ALTER TABLE orders ADD CONSTRAINT orders_total_check CHECK (total >= 0);
