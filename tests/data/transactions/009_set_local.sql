begin;
SET LOCAL maintenance_work_mem = '64MB';
SET LOCAL search_path = public;
CREATE INDEX orders_created_idx ON orders (created_at);
ALTER TABLE orders ADD COLUMN channel text;
ALTER TABLE orders ALTER COLUMN channel SET DEFAULT 'web';
end transaction;
