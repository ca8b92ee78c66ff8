Begin;
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_type WHERE typname = 'order_state') THEN
        CREATE TYPE order_state AS ENUM ('new', 'paid', 'shipped');
    END IF;
END
$$;
CREATE FUNCTION bump_revision() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    NEW.revision := OLD.revision + 1;
    RETURN NEW;
END
$body$;
CREATE FUNCTION order_weight(total numeric) RETURNS numeric LANGUAGE sql IMMUTABLE
BEGIN ATOMIC
    SELECT total * 2;
END;
ALTER TABLE orders ADD COLUMN revision int NOT NULL DEFAULT 0;
CREATE TRIGGER orders_revision BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION bump_revision();
CREATE INDEX orders_weight_idx ON orders (order_weight(total));
Commit;
