-- a psql script, not plain SQL
SELECT 1;
\set ON_ERROR_STOP on
SELECT 2;
