-- the author's own batching: a DO block that commits runs outside any transaction
DO $$
DECLARE
    n bigint;
BEGIN
    LOOP
        UPDATE orders SET channel = 'store' WHERE id IN (SELECT id FROM orders WHERE channel IS NULL LIMIT 1000);
        GET DIAGNOSTICS n = ROW_COUNT;
        EXIT WHEN n = 0;
        COMMIT;
    END LOOP;
END
$$;
BEGIN;
ALTER TABLE order_audit ADD PRIMARY KEY (id);
ALTER TABLE orders ALTER COLUMN channel SET NOT NULL;
COMMIT;
