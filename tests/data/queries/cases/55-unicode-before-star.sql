SELECT 'héllo — ✓' AS greeting, * FROM "Mixed Case";
