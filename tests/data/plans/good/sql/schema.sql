-- a table and a function with a dollar-quoted body
CREATE TABLE IF NOT EXISTS orders (
    id bigint PRIMARY KEY,
    total numeric NOT NULL
);

CREATE OR REPLACE FUNCTION order_total(o orders) RETURNS numeric
LANGUAGE sql AS $$ SELECT o.total; $$;
