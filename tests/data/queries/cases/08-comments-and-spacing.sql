-- every column of one client
SELECT /* all of them */ *   -- keep this comment
  FROM   hydra_client
 WHERE  id = 'c1'   ;
