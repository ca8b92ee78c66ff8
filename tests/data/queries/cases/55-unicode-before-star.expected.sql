SELECT 'héllo — ✓' AS greeting, "Id", "Value Text" FROM "Mixed Case";
