SELECT "M"."Id", "M"."Value Text" FROM "Mixed Case" AS "M" WHERE "M"."Id" = 1;
