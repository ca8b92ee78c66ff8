"""The Hydra end-to-end run's traffic beside pgbench: consent revocations on blue, as 1.x's admin API does them.

1.x revokes a consent session by deleting its ``hydra_oauth2_consent_request`` row (the handled row and the
tokens issued under it go by ON DELETE CASCADE). These tables do not exist in 2.x, so this runs on blue
directly (not through PgBouncer) until blue refuses a write (the cutover's fence); ``revoked`` is exactly the
set that committed. Locks: row locks of the deleted rows and their cascades, one short transaction each.
"""

from __future__ import annotations

import threading

import psycopg

from .population import Scale


def consent_pool(scale: Scale) -> list[str]:
    """The consent challenges left to revocations: flows the pgbench traffic never picks (see traffic.pgbench)."""
    return [f"e2e-cc-{k}" for k in range(keep_flows(scale), scale.flows)]


def keep_flows(scale: Scale) -> int:
    """Flows below this number are the pgbench traffic's; the rest (at least 5, about 1%) are revoked."""
    return scale.flows - max(5, scale.flows // 100)


class ConsentRevoker:
    """Revoke the pool's consents on blue one by one, every ``interval`` seconds, until stopped or fenced."""

    def __init__(self, dsn: str, challenges: list[str], interval: float = 0.2) -> None:
        self.dsn = dsn
        self.challenges = list(challenges)
        self.interval = interval
        self.revoked: list[str] = []
        self.stopped_by: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hydra-consent-revoker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        for challenge in self.challenges:
            if self._stop.wait(self.interval):
                return
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn, conn.transaction():
                    conn.execute("DELETE FROM hydra_oauth2_consent_request WHERE challenge = %s", (challenge,))
                    conn.execute("INSERT INTO e2e_revocation_log (request_id, kind) VALUES (%s, 'consent')",
                                 (challenge,))
            except psycopg.Error as exc:  # blue fenced (read-only) or its sessions ended: the window closed
                self.stopped_by = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                return
            self.revoked.append(challenge)

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join()
        return self.revoked
