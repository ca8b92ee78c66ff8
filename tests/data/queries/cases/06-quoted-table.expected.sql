SELECT "Id", "Value Text" FROM "Mixed Case";
