-- No transaction control: migrate (and popx) run this file as one transaction.
UPDATE accounts SET legacy_flag = false WHERE legacy_flag IS NULL OR NOT legacy_flag;
ALTER TABLE accounts ALTER COLUMN legacy_flag SET DEFAULT false;
CREATE TABLE order_audit (id bigint, order_id bigint, total numeric(12, 2));
INSERT INTO order_audit SELECT id, id, total FROM orders WHERE id <= 100;
ALTER TABLE order_audit ADD CONSTRAINT order_audit_order_fk FOREIGN KEY (order_id) REFERENCES orders (id);
DELETE FROM orders WHERE id > 5990;
ALTER TABLE orders ADD CONSTRAINT orders_id_positive CHECK (id > 0);
