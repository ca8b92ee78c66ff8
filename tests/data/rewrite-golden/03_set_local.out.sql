SET lock_timeout = '2s';
-- bluegreen rewrite: run this file as it is (psql -v ON_ERROR_STOP=1 -f FILE): each BEGIN ... COMMIT is one transaction, every other statement runs alone
SET maintenance_work_mem = '64MB';
begin;
SET LOCAL maintenance_work_mem = '1GB';
SET LOCAL search_path = shop, public;
ALTER TABLE orders ADD COLUMN channel text;
COMMIT;
-- bluegreen: CREATE INDEX CONCURRENTLY cannot run inside a transaction block: it runs outside the transaction of line 2 (atomicity changed)
SET maintenance_work_mem TO '1GB';
SET search_path TO 'shop', 'public';
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_channel_idx ON orders (channel);
SET maintenance_work_mem = '64MB';
RESET search_path;
begin;
SET LOCAL maintenance_work_mem = '1GB';
SET LOCAL search_path = shop, public;
ALTER TABLE orders ALTER COLUMN channel SET DEFAULT 'web';
end;
