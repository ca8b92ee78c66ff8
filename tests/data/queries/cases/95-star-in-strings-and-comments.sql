SELECT 'SELECT * FROM t' AS q -- SELECT * here is a comment
/* SELECT * */;
