START TRANSACTION;
DROP INDEX orders_note_idx;
CREATE INDEX orders_note_lower_idx ON orders (lower(note));
ALTER TABLE orders ALTER COLUMN note SET DEFAULT '';
COMMIT;
