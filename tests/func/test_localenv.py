"""The real local servers the suite runs on: versions, auth, isolation, PgBouncer, pgbench."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from orchestrator.localenv import (
    Databases,
    LocalCluster,
    LocalEnvError,
    LocalPgBouncer,
    Pgbench,
    free_port,
)

pytestmark = pytest.mark.func

_seen_databases: list[str] = []


def _server_version_num(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    return int(row[0])


def test_blue_is_postgres_15_and_green_is_postgres_18(blue: LocalCluster, green: LocalCluster) -> None:
    assert _server_version_num(blue.dsn()) // 10000 == 15
    assert _server_version_num(green.dsn()) // 10000 == 18
    assert (blue.bins.major, green.bins.major) == (15, 18)
    assert blue.port != green.port


def test_tcp_connections_need_the_password(blue: LocalCluster, green: LocalCluster) -> None:
    for cluster in (blue, green):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(cluster.dsn(password=False), passfile=os.devnull, connect_timeout=5).close()
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(cluster.dsn(), password="not-" + cluster.password, connect_timeout=5).close()
        with psycopg.connect(make_conninfo(**cluster.conninfo())) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


def test_servers_listen_on_loopback_only(blue: LocalCluster, green: LocalCluster) -> None:
    for cluster in (blue, green):
        with psycopg.connect(cluster.dsn()) as conn:
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
            assert conn.execute("SHOW fsync").fetchone() == ("off",)
            assert conn.execute("SHOW max_connections").fetchone() == ("200",)


def test_dbs_gives_each_test_its_own_database(dbs: Databases) -> None:
    for dsn in (dbs.blue_dsn, dbs.green_dsn):
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (dbs.name,)
            conn.execute("CREATE TABLE marker (id int)")
    _seen_databases.append(dbs.name)


def test_dbs_does_not_see_other_tests_databases(dbs: Databases) -> None:
    assert dbs.name not in _seen_databases
    for cluster, dsn in ((dbs.blue, dbs.blue_dsn), (dbs.green, dbs.green_dsn)):
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT to_regclass('marker')").fetchone() == (None,)
        with cluster.connect() as conn:
            names = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        assert dbs.name in names
        assert names.isdisjoint(_seen_databases), "an earlier test's database was not dropped"


def test_pgbouncer_transaction_mode_reaches_blue(
    pgbouncer: LocalPgBouncer, blue: LocalCluster, dbs: Databases
) -> None:
    with psycopg.connect(dbs.blue_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t VALUES (1, 'from blue')")
    with psycopg.connect(pgbouncer.dsn(dbs.name), prepare_threshold=None) as conn:
        for _ in range(10):  # past psycopg's default prepare threshold: nothing gets prepared
            assert conn.execute("SELECT v FROM t WHERE id = %s", (1,)).fetchone() == ("from blue",)
            conn.commit()
        row = conn.execute("SELECT current_setting('port'), current_setting('server_version_num')").fetchone()
    assert row is not None
    assert int(row[0]) == blue.port
    assert int(row[1]) // 10000 == 15


def test_pgbouncer_admin_console_answers_show_pools(pgbouncer: LocalPgBouncer, dbs: Databases) -> None:
    with psycopg.connect(pgbouncer.dsn(dbs.name), prepare_threshold=None) as client:
        client.execute("SELECT 1")
        with pgbouncer.admin_connect() as admin:
            cur = admin.execute("SHOW POOLS")
            columns = [col.name for col in cur.description or []]
            pools = [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
    mine = [pool for pool in pools if pool["database"] == dbs.name]
    assert mine, f"no pool for {dbs.name} in {pools}"
    assert mine[0]["pool_mode"] == "transaction"
    assert mine[0]["user"] == "postgres"


def test_pgbench_through_pgbouncer(
    pgbouncer: LocalPgBouncer, blue: LocalCluster, dbs: Databases, tmp_path: Path, pg_password: str
) -> None:
    bench = Pgbench(
        blue.bins,
        pgbouncer.host,
        pgbouncer.port,
        dbs.name,
        pg_password,
        workdir=tmp_path,
        clients=4,
        jobs=2,
        duration_s=2,
    )
    assert pg_password not in " ".join(bench.argv())
    bench.initialize(scale=1)
    bench.start()
    result = bench.wait(timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.transactions > 0
    assert result.failed == 0
    assert result.aborted_clients == 0
    assert result.tps > 0
    assert result.latency_avg_ms is not None
    assert result.latency_max_ms is not None
    assert result.latency_p99_ms is not None
    assert 0 < result.latency_p99_ms <= result.latency_max_ms
    assert "query mode: simple" in result.stdout


def test_pgbench_reports_aborted_clients(blue: LocalCluster, dbs: Databases, tmp_path: Path) -> None:
    script = tmp_path / "boom.sql"
    script.write_text("SELECT 1/0;\n")
    bench = Pgbench(
        blue.bins,
        blue.host,
        blue.port,
        dbs.name,
        blue.password,
        workdir=tmp_path,
        clients=2,
        transactions=5,
        script=script,
    )
    bench.start()
    result = bench.stop()
    assert result.returncode != 0
    assert result.aborted_clients == 2
    assert result.transactions == 0
    assert not result.ok


def test_cluster_restarts_on_its_port_with_its_data(blue: LocalCluster, tmp_path: Path) -> None:
    cluster = LocalCluster("scratch", blue.bins, tmp_path, "pw-scratch")
    try:
        cluster.start()
        cluster.start()  # idempotent
        cluster.create_database("kept")
        cluster.stop()
        cluster.stop()  # idempotent
        assert not cluster.is_running()
        again = LocalCluster("scratch", blue.bins, tmp_path, "pw-scratch")
        assert again.port == cluster.port
        assert again.datadir.resolve() == cluster.datadir.resolve()
        with again, again.connect() as conn:
            assert conn.execute("SELECT 1 FROM pg_database WHERE datname = 'kept'").fetchone() == (1,)
        assert not again.is_running()
    finally:
        cluster.destroy()
    assert not cluster.rundir.exists()
    assert not (tmp_path / "scratch").exists()


def test_failed_start_raises_with_the_log_tail(blue: LocalCluster, tmp_path: Path) -> None:
    cluster = LocalCluster("broken", blue.bins, tmp_path, "pw-broken", settings={"shared_buffers": "'lots'"})
    try:
        with pytest.raises(LocalEnvError, match="shared_buffers") as failure:
            cluster.start()
        assert "log tail" in str(failure.value)
        assert not cluster.is_running()
        cluster.stop()  # nothing to stop
    finally:
        cluster.destroy()


def test_free_port_never_repeats() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
