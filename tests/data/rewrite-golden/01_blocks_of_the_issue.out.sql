SET lock_timeout = '2s';
-- bluegreen rewrite: run this file as it is (psql -v ON_ERROR_STOP=1 -f FILE): each BEGIN ... COMMIT is one transaction, every other statement runs alone
-- bluegreen: CREATE INDEX CONCURRENTLY cannot run inside a transaction block: it runs outside the transaction of line 1 (atomicity changed)
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_status_idx ON orders (status);
BEGIN;
ALTER TABLE orders ADD CONSTRAINT orders_account_fk FOREIGN KEY (account_id) REFERENCES accounts (id) NOT VALID;
COMMIT;
-- bluegreen: VALIDATE CONSTRAINT runs alone, once the NOT VALID constraint is committed: it runs outside the transaction of line 1 (atomicity changed)
ALTER TABLE orders VALIDATE CONSTRAINT orders_account_fk;
-- bluegreen: the unique index is built first (CREATE INDEX CONCURRENTLY cannot run inside a transaction), so the key change stays in one transaction: it runs outside the transaction of line 1 (atomicity changed)
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS accounts_email_key_bgnew ON accounts (email, team);
BEGIN;
ALTER TABLE accounts DROP CONSTRAINT accounts_email_key;
ALTER TABLE accounts ADD CONSTRAINT accounts_email_key UNIQUE USING INDEX accounts_email_key_bgnew;
COMMIT;
start transaction;
ALTER TABLE orders ADD COLUMN note text;
COMMIT;
-- bluegreen: the backfill of orders.note runs in batches of 5000 rows, each committed: it runs outside the transaction of line 8 (atomicity changed)
DO $bluegreen$
DECLARE
  bluegreen_rows bigint;
  bluegreen_set bigint;
BEGIN
  LOOP
    WITH bluegreen_batch AS (
      UPDATE orders SET note = '' WHERE ctid = ANY(ARRAY(SELECT ctid FROM orders WHERE note IS NULL LIMIT 5000)) AND note IS NULL RETURNING note IS NOT NULL AS bluegreen_filled
    )
    SELECT count(*), count(*) FILTER (WHERE bluegreen_filled) INTO bluegreen_rows, bluegreen_set FROM bluegreen_batch;
    COMMIT;
    EXIT WHEN bluegreen_rows = 0;
    IF bluegreen_set = 0 THEN  -- these rows stay NULL: run the statement once, as written
      UPDATE orders SET note = '' WHERE note IS NULL;
      EXIT;
    END IF;
  END LOOP;
END
$bluegreen$;
ALTER TABLE orders ADD CONSTRAINT orders_note_bgnn CHECK (note IS NOT NULL) NOT VALID;
-- bluegreen: VALIDATE CONSTRAINT runs alone, once the NOT VALID constraint is committed: it runs outside the transaction of line 8 (atomicity changed)
ALTER TABLE orders VALIDATE CONSTRAINT orders_note_bgnn;
start transaction;
ALTER TABLE orders ALTER COLUMN note SET NOT NULL;
ALTER TABLE orders DROP CONSTRAINT orders_note_bgnn;
commit;
