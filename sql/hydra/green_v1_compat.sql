-- After the migrations, before the cutover: let Hydra 1.x's token writes (the old binaries still running
-- when PgBouncer starts pointing at green) succeed on the 2.x schema. The only 2.x token column that 1.x
-- does not write and that has no default is nid (NOT NULL since 20220210000001000077 and friends): give it
-- the one network as default. A column default is metadata only (no rewrite, a brief ACCESS EXCLUSIVE);
-- undone by DROP DEFAULT (the rollback of this step). Everything else 1.x writes to these tables has the
-- same name and type in 2.x (sql/hydra/queries/v1 checks that).
DO $$
DECLARE
    network uuid := (SELECT id FROM networks ORDER BY created_at LIMIT 1);
    t text;
BEGIN
    IF network IS NULL THEN
        RAISE EXCEPTION 'green has no row in networks: the 2.x migrations did not run';
    END IF;
    FOREACH t IN ARRAY ARRAY['hydra_oauth2_access', 'hydra_oauth2_refresh', 'hydra_oauth2_code',
                             'hydra_oauth2_oidc', 'hydra_oauth2_pkce'] LOOP
        EXECUTE format('ALTER TABLE %I ALTER COLUMN nid SET DEFAULT %L::uuid', t, network);
    END LOOP;
END
$$;
