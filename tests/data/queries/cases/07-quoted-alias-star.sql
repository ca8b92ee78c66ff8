SELECT "M".* FROM "Mixed Case" AS "M" WHERE "M"."Id" = 1;
