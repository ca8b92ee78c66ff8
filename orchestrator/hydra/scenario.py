"""``bluegreen hydra-e2e``: the demo's servers and traffic loop around plans/hydra.yaml on Hydra at scale.

Blue (PG 15) is loaded with Hydra v1.11.10, a population of ``scale`` tokens and the 5 injected bad rows
(``load``); pgbench runs Hydra 1.x token traffic (sql/hydra/traffic.pgbench) through PgBouncer for the whole run,
before and after the cutover; consent revocations run beside it on blue until its fence (``ConsentRevoker``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ..demo import Servers
from ..sqlfiles import sql_dir
from .load import load
from .population import INJECTED, Scale
from .traffic import ConsentRevoker, consent_pool, keep_flows

HYDRA_DB = "hydra"


def hydra_plan_path() -> Path:
    return sql_dir().parent / "plans" / "hydra.yaml"


class HydraScenario:
    """plans/hydra.yaml on a generated Hydra v1.11.10 population (``scale`` access and refresh tokens)."""

    name = "hydra"
    dbname = HYDRA_DB
    clients = 4

    def __init__(self, scale: Scale, fail_validation: bool = False, consent_interval: float = 0.2,
                 rate: int = 400) -> None:
        """:param rate: pgbench's target of client transactions per second (all clients)."""
        self.scale = scale
        self.rate = rate
        self.fail_validation = fail_validation
        self.consent_interval = consent_interval
        self.plan_path = hydra_plan_path()
        self.loaded: dict[str, int] = {}
        self._revoker: ConsentRevoker | None = None

    def prepare(self, servers: Servers, note: Callable[[str], object]) -> None:
        def progress(table: str, done: int, total: int) -> None:
            if done == total or done % (10 * self.scale.batch) == 0:
                note(f"  {table}: {done}/{total}")

        self.loaded = load(servers.blue.dsn(HYDRA_DB), self.scale, note=note, progress=progress)

    def pgbench_script(self) -> Path:
        return sql_dir() / "hydra" / "traffic.pgbench"

    def pgbench_args(self) -> list[str]:
        scale = self.scale
        # a token server at a steady rate, not pgbench's flat-out: the captured events (about 1.4 per transaction)
        # must be replayed faster than they are written on 2 shared cores, or the cutover's lag gate refuses
        return ["-R", str(self.rate), "-D", f"tokens={scale.tokens}", "-D", f"flows={scale.flows}",
                "-D", f"keep={keep_flows(scale)}", "-D", f"clients={scale.clients}"]

    def env(self, servers: Servers) -> dict[str, str]:
        return {"HYDRA_EXTRA_CHECK": "SELECT count(*) = -1 FROM hydra_client"} if self.fail_validation else {}

    def start_side_traffic(self, servers: Servers) -> None:
        self._revoker = ConsentRevoker(servers.blue.dsn(HYDRA_DB), consent_pool(self.scale), self.consent_interval)
        self._revoker.start()

    def finish_side_traffic(self) -> dict[str, Any]:
        if self._revoker is None:
            return {}
        revoked = self._revoker.stop()
        return {"consents_revoked_on_blue": revoked, "consent_revoker_stopped_by": self._revoker.stopped_by,
                "population": self.loaded}

    def after_run(self, servers: Servers) -> dict[str, Any]:
        try:
            return outcome(servers.blue.dsn(HYDRA_DB), servers.green.dsn(HYDRA_DB))
        except psycopg.Error as exc:  # green never got the schema (a failed run): say so, do not mask the run's error
            return {"outcome_error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}


def outcome(blue_dsn: str, green_dsn: str) -> dict[str, Any]:
    """Every revocation made on blue (the traffic's log there) checked on green, and green's quarantine.

    A token revocation (a request id) is effective on green when no access token and no active refresh token
    of that request is left there; a consent revocation when its flow and the tokens issued under it are gone.
    """
    with psycopg.connect(blue_dsn, autocommit=True) as blue:
        logged = blue.execute("SELECT kind, request_id FROM e2e_revocation_log ORDER BY revoked_at").fetchall()
    tokens = sorted({r for k, r in logged if k == "token"})
    consents = sorted({r for k, r in logged if k == "consent"})
    with psycopg.connect(green_dsn, autocommit=True) as green:
        live_tokens = [r[0] for r in green.execute(
            "SELECT DISTINCT request_id FROM hydra_oauth2_access WHERE request_id = ANY(%(ids)s)"
            " UNION SELECT DISTINCT request_id FROM hydra_oauth2_refresh WHERE request_id = ANY(%(ids)s) AND active",
            {"ids": tokens}).fetchall()]
        live_consents = [r[0] for r in green.execute(
            "SELECT consent_challenge_id FROM hydra_oauth2_flow WHERE consent_challenge_id = ANY(%(ids)s)"
            " UNION SELECT challenge_id FROM hydra_oauth2_access WHERE challenge_id = ANY(%(ids)s)"
            " UNION SELECT challenge_id FROM hydra_oauth2_refresh WHERE challenge_id = ANY(%(ids)s)",
            {"ids": consents}).fetchall()]
        quarantined: list[list[str]] = []
        for table, (key, _, _) in INJECTED.items():
            exists = green.execute("SELECT to_regclass(%s) IS NOT NULL", (f"bluegreen_quarantine.{table}",)
                                   ).fetchone()
            if exists is None or not exists[0]:
                continue
            rows = green.execute(sql.SQL("SELECT row_data->>{}, constraint_name FROM bluegreen_quarantine.{}").format(
                sql.Literal(key), sql.Identifier(table))).fetchall()
            quarantined.extend([table, str(k), str(c)] for k, c in rows)
    injected = sorted([table, k, constraint] for table, (_, keys, constraint) in INJECTED.items() for k in keys)
    return {
        "token_revocations_on_blue": len(tokens),
        "token_revocations_not_effective_on_green": sorted(live_tokens),
        "consent_revocations_on_blue": len(consents),
        "consent_revocations_not_effective_on_green": sorted(live_consents),
        "quarantined": sorted(quarantined),
        "quarantined_exactly_injected": sorted(quarantined) == injected,
    }
