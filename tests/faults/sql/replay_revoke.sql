-- A refresh-token revocation captured on blue, onto green. Deliberately not idempotent: the counter shows an
-- event replayed twice. The CASE is the fault suite's gate: a test holding advisory lock 7002 parks the
-- catch-up inside its transaction (tokens revoked after the snapshot end in b2/c3), one holding 7003 parks the
-- cutover's drain inside the PgBouncer pause (tokens revoked after the catch-up end in d4). Unheld, it is true.
UPDATE refresh_tokens SET active = false, revocations = revocations + 1
WHERE signature = :signature
  AND CASE WHEN right(:signature, 2) = 'c3' THEN EXISTS (SELECT FROM pg_advisory_xact_lock_shared(7002))
           WHEN right(:signature, 2) = 'd4' THEN EXISTS (SELECT FROM pg_advisory_xact_lock_shared(7003))
           ELSE true END;
