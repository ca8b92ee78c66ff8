-- Constraints blue's data breaks: the inline cleanup quarantines the violating rows just before each
-- (a duplicate email first, then every token whose client is missing, including the duplicates' tokens).
-- The fault suite's gate first: a test holding advisory lock 7001 on green parks the migration here.
SELECT pg_advisory_xact_lock_shared(7001);
ALTER TABLE clients ADD CONSTRAINT clients_email_key UNIQUE (email);
ALTER TABLE access_tokens ADD CONSTRAINT access_tokens_client_fkey FOREIGN KEY (client_id) REFERENCES clients (id);
ALTER TABLE refresh_tokens ADD CONSTRAINT refresh_tokens_client_fkey FOREIGN KEY (client_id) REFERENCES clients (id);
