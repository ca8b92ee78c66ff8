-- a BOM and CRLF line ends
BEGIN;
CREATE INDEX a_b_idx ON a (b);  -- kept comment
ALTER TABLE a ADD COLUMN c int;
COMMIT;
SELECT 1