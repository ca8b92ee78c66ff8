begin transaction;
-- the unique key grows a column: the old constraint goes, the new one comes, atomically
alter table accounts drop constraint accounts_email_key;
alter table accounts add constraint accounts_email_key unique (email, team);
commit;
