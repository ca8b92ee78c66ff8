-- Fails (and so fails the step) unless green holds every table with rows and every index is valid.
DO $$
BEGIN
    IF (SELECT count(*) FROM hydra_oauth2_access) = 0 OR (SELECT count(*) FROM hydra_oauth2_refresh) = 0 THEN
        RAISE EXCEPTION 'green has no tokens';
    END IF;
    IF EXISTS (SELECT FROM pg_index WHERE NOT indisvalid) THEN
        RAISE EXCEPTION 'green has an invalid index';
    END IF;
END
$$;
