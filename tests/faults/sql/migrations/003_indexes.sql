CREATE INDEX access_tokens_request_id_idx ON access_tokens (request_id);
CREATE INDEX refresh_tokens_request_id_idx ON refresh_tokens (request_id);
CREATE INDEX access_tokens_subject_idx ON access_tokens (subject) WHERE active;
