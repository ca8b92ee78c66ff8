-- every column of one client
SELECT /* all of them */ id, client_name, created_at, "Owner", "select"   -- keep this comment
  FROM   hydra_client
 WHERE  id = 'c1'   ;
