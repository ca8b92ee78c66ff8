SELECT * FROM "Mixed Case";
