SET maintenance_work_mem = '64MB';
begin;
SET LOCAL maintenance_work_mem = '1GB';
SET LOCAL search_path = shop, public;
ALTER TABLE orders ADD COLUMN channel text;
CREATE INDEX orders_channel_idx ON orders (channel);
ALTER TABLE orders ALTER COLUMN channel SET DEFAULT 'web';
end;
