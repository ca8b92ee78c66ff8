"""A generated Hydra v1.11.10 population at scale, written server-side (``INSERT ... SELECT generate_series``).

``populate(dsn, Scale(tokens=n))`` adds, to a database at Hydra v1.11.10 (see ``corpus``): clients, login
sessions, login and consent flows (requests and their handled rows) and ``n`` access plus ``n`` refresh tokens,
in batches, one transaction each, reporting progress. Every key is derived from the row number, so a rerun
(or a resumed run) inserts nothing twice (``ON CONFLICT DO NOTHING``) and the same SCALE gives the same rows;
only the timestamps follow ``base`` (tokens are issued within the hour before it, so they are live).

``inject_bad_rows`` adds the 5 rows that break the 2.x migrations (ANALYSIS.md section 3: A, C and E), which a
migrate step with cleanup must quarantine, and nothing else.

Locks: row locks of the inserted rows only (plus FOR KEY SHARE on the referenced clients and flows). Not undone:
drop the database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import LiteralString

import psycopg
from psycopg import sql

# (table, rows done, rows in total): called after each committed batch
Progress = Callable[[str, int, int], object]

PREFIX = "e2e"  # every generated key starts with it: e2e-client-7, e2e-at-123, ...


@dataclass(frozen=True)
class Scale:
    """How big the population is: ``tokens`` access and as many refresh tokens, the rest derived from it."""

    tokens: int
    batch: int = 50_000

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise ValueError(f"scale must be at least 1 token, not {self.tokens}")
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1, not {self.batch}")

    @property
    def clients(self) -> int:
        return max(5, self.tokens // 2_000)

    @property
    def sessions(self) -> int:
        """login sessions"""
        return max(10, self.tokens // 10)

    @property
    def flows(self) -> int:
        """login + consent flows (each a request and its handled row, for both)"""
        return max(10, self.tokens // 10)

    def counts(self) -> dict[str, int]:
        """Rows the population adds per table."""
        return {
            "hydra_client": self.clients,
            "hydra_oauth2_authentication_session": self.sessions,
            "hydra_oauth2_authentication_request": self.flows,
            "hydra_oauth2_authentication_request_handled": self.flows,
            "hydra_oauth2_consent_request": self.flows,
            "hydra_oauth2_consent_request_handled": self.flows,
            "hydra_oauth2_access": self.tokens,
            "hydra_oauth2_refresh": self.tokens,
        }


# Per table: INSERT ... SELECT over generate_series(%(lo)s::int, %(hi)s::int) AS i; %(clients)s, %(sessions)s, %(flows)s
# and %(base)s are parameters. Clients copy testdata's client-0001 (a 1.x client whose values convert to JSON).
_INSERTS: tuple[tuple[str, LiteralString], ...] = (
    ("hydra_client", """
INSERT INTO hydra_client
SELECT (jsonb_populate_record(NULL::hydra_client, to_jsonb(c) || jsonb_build_object(
        'pk', nextval(pg_get_serial_sequence('hydra_client', 'pk')), 'id', 'e2e-client-' || i,
        'client_name', 'e2e client ' || i, 'registration_access_token_signature', ''))).*
FROM generate_series(%(lo)s::int, %(hi)s::int) AS i CROSS JOIN hydra_client c
WHERE c.id = 'client-0001'
ON CONFLICT DO NOTHING"""),
    ("hydra_oauth2_authentication_session", """
INSERT INTO hydra_oauth2_authentication_session (id, authenticated_at, subject, remember)
SELECT 'e2e-ls-' || i, %(base)s::timestamp - make_interval(secs => i %% 86400), 'e2e-user-' || i, i %% 2 = 0
FROM generate_series(%(lo)s::int, %(hi)s::int) AS i
ON CONFLICT DO NOTHING"""),
    ("hydra_oauth2_authentication_request", """
INSERT INTO hydra_oauth2_authentication_request (challenge, requested_scope, verifier, csrf, subject, request_url,
    skip, client_id, requested_at, authenticated_at, oidc_context, login_session_id, requested_at_audience)
SELECT 'e2e-lc-' || i, 'openid|offline', 'e2e-lv-' || i, 'e2e-lcsrf-' || i, 'e2e-user-' || (i %% %(sessions)s),
       'https://hydra.example/oauth2/auth?n=' || i, false, 'e2e-client-' || (i %% %(clients)s),
       %(base)s::timestamp - make_interval(secs => i %% 86400), %(base)s::timestamp - make_interval(secs => i %% 86400),
       '{}', 'e2e-ls-' || (i %% %(sessions)s), ''
FROM generate_series(%(lo)s::int, %(hi)s::int) AS i
ON CONFLICT DO NOTHING"""),
    ("hydra_oauth2_authentication_request_handled", """
INSERT INTO hydra_oauth2_authentication_request_handled (challenge, subject, remember, remember_for, error, acr,
    requested_at, authenticated_at, was_used, forced_subject_identifier, context, amr)
SELECT 'e2e-lc-' || i, 'e2e-user-' || (i %% %(sessions)s), true, 3600, '{}', '',
       %(base)s::timestamp - make_interval(secs => i %% 86400), %(base)s::timestamp - make_interval(secs => i %% 86400),
       true, '', '{}', 'pwd'
FROM generate_series(%(lo)s::int, %(hi)s::int) AS i
ON CONFLICT DO NOTHING"""),
    ("hydra_oauth2_consent_request", """
INSERT INTO hydra_oauth2_consent_request (challenge, verifier, client_id, subject, request_url, skip, requested_scope,
    csrf, authenticated_at, requested_at, oidc_context, forced_subject_identifier, login_session_id, login_challenge,
    requested_at_audience, acr, context, amr)
SELECT 'e2e-cc-' || i, 'e2e-cv-' || i, 'e2e-client-' || (i %% %(clients)s), 'e2e-user-' || (i %% %(sessions)s),
       'https://hydra.example/oauth2/auth?n=' || i, false, 'openid|offline', 'e2e-ccsrf-' || i,
       %(base)s::timestamp - make_interval(secs => i %% 86400), %(base)s::timestamp - make_interval(secs => i %% 86400),
       '{}', '', 'e2e-ls-' || (i %% %(sessions)s), 'e2e-lc-' || i, '', '', '{}', 'pwd'
FROM generate_series(%(lo)s::int, %(hi)s::int) AS i
ON CONFLICT DO NOTHING"""),
    ("hydra_oauth2_consent_request_handled", """
INSERT INTO hydra_oauth2_consent_request_handled (challenge, granted_scope, remember, remember_for, error,
    requested_at, session_access_token, session_id_token, authenticated_at, was_used, granted_at_audience, handled_at)
SELECT 'e2e-cc-' || i, 'openid|offline', true, 0, '{}', %(base)s::timestamp - make_interval(secs => i %% 86400),
       '{}', '{}', %(base)s::timestamp - make_interval(secs => i %% 86400), true, '',
       %(base)s::timestamp - make_interval(secs => i %% 86400)
FROM generate_series(%(lo)s::int, %(hi)s::int) AS i
ON CONFLICT DO NOTHING"""),
    # tokens: issued within the hour before base; the flow (and so client and subject) of token i is i % flows
    ("hydra_oauth2_access", """
INSERT INTO hydra_oauth2_access (signature, request_id, requested_at, client_id, scope, granted_scope, form_data,
    session_data, subject, active, requested_audience, granted_audience, challenge_id)
SELECT 'e2e-at-' || i, 'e2e-req-' || i, %(base)s::timestamp - make_interval(secs => i %% 3000),
       'e2e-client-' || ((i %% %(flows)s) %% %(clients)s), 'openid offline', 'openid offline', '', '{}',
       'e2e-user-' || ((i %% %(flows)s) %% %(sessions)s), true, '', '', 'e2e-cc-' || (i %% %(flows)s)
FROM generate_series(%(lo)s::int, %(hi)s::int) AS i
ON CONFLICT DO NOTHING"""),
    # one in ten refresh tokens was already rotated (inactive), as a live Hydra holds
    ("hydra_oauth2_refresh", """
INSERT INTO hydra_oauth2_refresh (signature, request_id, requested_at, client_id, scope, granted_scope, form_data,
    session_data, subject, active, requested_audience, granted_audience, challenge_id)
SELECT 'e2e-rt-' || i, 'e2e-req-' || i, %(base)s::timestamp - make_interval(secs => i %% 3000),
       'e2e-client-' || ((i %% %(flows)s) %% %(clients)s), 'openid offline', 'openid offline', '', '{}',
       'e2e-user-' || ((i %% %(flows)s) %% %(sessions)s), i %% 10 <> 0, '', '', 'e2e-cc-' || (i %% %(flows)s)
FROM generate_series(%(lo)s::int, %(hi)s::int) AS i
ON CONFLICT DO NOTHING"""),
)


def populate(dsn: str, scale: Scale, base: datetime | None = None, progress: Progress | None = None) -> dict[str, int]:
    """Insert the population into a database at Hydra v1.11.10 (with its testdata: clients copy client-0001).

    :param base: tokens are issued in the hour before it (default: the server's ``now()``).
    :returns: rows inserted per table (0 for rows a previous run already wrote).
    """
    counts = scale.counts()
    inserted: dict[str, int] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        if base is None:
            row = conn.execute("SELECT localtimestamp").fetchone()
            assert row is not None
            base = row[0]
        params: dict[str, object] = {"clients": scale.clients, "sessions": scale.sessions, "flows": scale.flows,
                                     "base": base}
        for table, statement in _INSERTS:
            total = counts[table]
            inserted[table] = 0
            # rows are numbered 0 .. total-1 so that "i % clients" names every generated parent
            for lo in range(0, total, scale.batch):
                hi = min(lo + scale.batch, total) - 1
                with conn.transaction():
                    cur = conn.execute(statement, {**params, "lo": lo, "hi": hi})
                    inserted[table] += max(cur.rowcount, 0)
                if progress is not None:
                    progress(table, hi + 1, total)
        conn.execute("ANALYZE")
    return inserted


# Rows that break the 2.x migrations (ANALYSIS.md section 3), for a database at v1.11.10 with its testdata.
BAD_ROWS = """
-- A: a second consent request for one login challenge (older than the one testdata has): the flow merge
--    (20211019000001000001) would turn it into a duplicate flow and the flow's keys would fail
INSERT INTO hydra_oauth2_consent_request (challenge, verifier, client_id, subject, request_url, skip, requested_scope,
    csrf, requested_at, oidc_context, login_challenge)
SELECT 'bad-dup-consent', 'bad-dup-verifier', client_id, subject, request_url, skip, requested_scope, 'bad-dup-csrf',
       '2000-01-01', oidc_context, login_challenge
FROM hydra_oauth2_consent_request WHERE challenge = 'challenge-0003';
-- C: client list values that the text-to-JSON conversion (20220513000001000002) cannot cast
INSERT INTO hydra_client SELECT (jsonb_populate_record(NULL::hydra_client, to_jsonb(c)
    || jsonb_build_object('pk', nextval(pg_get_serial_sequence('hydra_client', 'pk')), 'id', 'bad-client-quote',
                          'redirect_uris', 'https://app.example/cb?x="1"'))).*
FROM hydra_client c WHERE id = 'client-0001';
INSERT INTO hydra_client SELECT (jsonb_populate_record(NULL::hydra_client, to_jsonb(c)
    || jsonb_build_object('pk', nextval(pg_get_serial_sequence('hydra_client', 'pk')), 'id', 'bad-client-backslash',
                          'contacts', 'ops\\team@example.com'))).*
FROM hydra_client c WHERE id = 'client-0001';
-- E: tokens of a client deleted behind the foreign key's back: the 2.x FOREIGN KEY (client_id, nid) fails.
--    On blue the 1.x key is re-added NOT VALID first (as after a bulk client purge), so a copy of blue
--    (pg_dump's post-data keeps NOT VALID) restores with the orphans, and only the 2.x migrations trip on them.
ALTER TABLE hydra_oauth2_access DROP CONSTRAINT hydra_oauth2_access_client_id_fk,
    ADD CONSTRAINT hydra_oauth2_access_client_id_fk FOREIGN KEY (client_id) REFERENCES hydra_client (id)
    ON DELETE CASCADE NOT VALID;
ALTER TABLE hydra_oauth2_refresh DROP CONSTRAINT hydra_oauth2_refresh_client_id_fk,
    ADD CONSTRAINT hydra_oauth2_refresh_client_id_fk FOREIGN KEY (client_id) REFERENCES hydra_client (id)
    ON DELETE CASCADE NOT VALID;
SET session_replication_role = replica;
INSERT INTO hydra_oauth2_access (signature, request_id, client_id, scope, granted_scope, form_data, session_data,
    subject)
VALUES ('bad-orphan-access', 'bad-orphan-req', 'bad-deleted-client', 'openid', 'openid', '', '', 'someone');
INSERT INTO hydra_oauth2_refresh (signature, request_id, client_id, scope, granted_scope, form_data, session_data,
    subject)
VALUES ('bad-orphan-refresh', 'bad-orphan-req', 'bad-deleted-client', 'openid', 'openid', '', '', 'someone');
SET session_replication_role = DEFAULT;
"""

# table -> (key column, injected keys, the cleanup check or constraint that quarantines them)
INJECTED: dict[str, tuple[str, frozenset[str], str]] = {
    "hydra_oauth2_consent_request": ("challenge", frozenset({"bad-dup-consent"}), "duplicate-login-challenge"),
    "hydra_client": ("id", frozenset({"bad-client-quote", "bad-client-backslash"}), "client-list-not-json"),
    "hydra_oauth2_access": ("signature", frozenset({"bad-orphan-access"}), "hydra_oauth2_access_client_id_fk"),
    "hydra_oauth2_refresh": ("signature", frozenset({"bad-orphan-refresh"}), "hydra_oauth2_refresh_client_id_fk"),
}


def inject_bad_rows(dsn: str) -> int:
    """Add the 5 rows of ``BAD_ROWS`` once (a rerun adds none); returns how many are there now.

    Needs superuser (``session_replication_role``) for the orphaned tokens, as a client deleted behind the
    foreign key's back needs.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM hydra_client WHERE id = 'bad-client-quote'").fetchone()
        if row is None or row[0] == 0:
            with conn.transaction():
                conn.execute(BAD_ROWS.encode())
        total = 0
        for table, (key, keys, _) in INJECTED.items():
            found = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} = ANY(%s)").format(
                sql.Identifier(table), sql.Identifier(key)), (sorted(keys),)).fetchone()
            total += int(found[0]) if found else 0
    return total
