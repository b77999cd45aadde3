"""Service benchmark: 10k-run submit, submit→running vs a bare Celery round trip, metric reads at 1M rows."""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import redis
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PG_ADMIN = os.environ.get("NCSWEEP_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("NCSWEEP_BENCH_REDIS", "redis://127.0.0.1:6379/12")
BASE = {"epochs": 1, "batch_size": 64, "device": "cpu", "eval": {"every": 1, "splits": ["test"]},
        "data": {"name": "gaussian", "train_size": 64, "test_size": 64, "gaussian_classes": 4, "gaussian_dim": 8},
        "model": {"name": "mlp", "width": 8, "depth": 1}}
HTTP = httpx.Client(timeout=120)  # one keep-alive client, as any API user holds (httpx.post() builds a new one)
POST_S: list[float] = []  # the HTTP submit part of submit->running
IDLE_S = 6.0  # a worker idle this long has its fresh prefork child ready (recycling takes ~4-5 s)
BARE_APP = '''
import os
from celery import Celery
bare = Celery("bare", broker="{broker}", backend="{broker}")
bare.conf.update(accept_content=["json"], task_serializer="json", result_serializer="json",
                 task_default_queue="bench.bare")
if os.environ.get("BARE_SAME") == "1":  # the ncsweep pool settings
    bare.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, worker_max_tasks_per_child=1)
@bare.task(name="bare.ping")
def ping(x):
    return x
'''


def fresh_database() -> str:
    name = f"ncsweep_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    from nc_core.db.migrate import upgrade

    upgrade(url)
    return url


def drop_database(url: str) -> None:
    from nc_core.db.session import dispose_engines

    dispose_engines()
    with create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT").connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))


def env_for(url: str, home: Path) -> dict[str, str]:
    return {**os.environ, "NCSWEEP_DATABASE_URL": url, "NCSWEEP_BROKER_URL": REDIS, "NCSWEEP_HOME": str(home),
            "NCSWEEP_AUTH_REQUIRED": "false", "NCSWEEP_HEARTBEAT_SECONDS": "1", "CUDA_VISIBLE_DEVICES": "",
            "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def start_api(env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app", "--host",
                             "127.0.0.1", "--port", str(port), "--log-level", "warning"], env=env, cwd=ROOT)
    for _ in range(200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("the API did not start")


def bench_submit(api: str, url: str, n_runs: int = 10_000, repeats: int = 3) -> list[float]:
    """POST /sweeps of a 10,000-run sweep (validate, expand, insert, commit, enqueue) — wall seconds."""
    times = []
    for rep in range(repeats):
        body = {"name": f"bench-{rep}", "base": BASE, "grid": {"optim.lr": [0.001 * (i + 1) for i in range(n_runs // 10)]},
                "seeds": list(range(10)), "max_runs": n_runs}
        t0 = time.perf_counter()
        r = HTTP.post(f"{api}/sweeps", json=body)
        times.append(time.perf_counter() - t0)
        assert r.status_code == 201 and r.json()["runs"] == n_runs and r.json()["enqueued"], r.text
        assert redis.Redis.from_url(REDIS).llen("celery") == n_runs
        redis.Redis.from_url(REDIS).flushdb()  # no worker is running yet: drop the messages
    with create_engine(url).begin() as c:  # and keep these runs away from the latency measurement
        c.execute(text("UPDATE run SET status = 'cancelled' WHERE status = 'queued'"))
    return times


def bench_latency(api: str, url: str, env: dict[str, str], bare_same: bool,
                  repeats: int = 5) -> tuple[list[float], list[float]]:
    """submit→running of a 1-run sweep with an idle worker, and a bare Celery round trip of a trivial task."""
    from worker.launch import worker_command

    engine = create_engine(url)
    worker = subprocess.Popen(worker_command("bench@host", "WARNING"), env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "bare_app.py").write_text(BARE_APP.format(broker=REDIS))
    bare = subprocess.Popen(  # a bare Celery app with the same pool settings and a trivial task
        [sys.executable, "-m", "celery", "-A", "bare_app:bare", "worker", "-P", "prefork", "-c", "1",
                             "-l", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                            cwd=tmp, env={**env, "PYTHONPATH": str(tmp), "BARE_SAME": "1" if bare_same else "0"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        submit = [_submit_to_running(api, engine, i + 100 * bare_same) for i in range(repeats + 1)][1:]  # 1st: warm-up
        sys.path.insert(0, str(tmp))
        from bare_app import ping

        ping.delay(0).get(timeout=60)  # warm-up
        rt = []
        for i in range(repeats):
            time.sleep(IDLE_S)  # idle worker, as above
            t0 = time.perf_counter()
            ping.delay(i).get(timeout=30)
            rt.append(time.perf_counter() - t0)
        return submit, rt
    finally:
        for p in (worker, bare):
            _stop(p)


def _submit_to_running(api: str, engine, i: int) -> float:  # noqa: ANN001
    time.sleep(IDLE_S)  # the previous tiny run finished and the worker is idle
    with engine.connect() as c:
        _wait(lambda: c.execute(text("SELECT count(*) FROM run WHERE status IN ('queued','running')")).scalar() == 0, 300)
    t0 = time.perf_counter()
    r = HTTP.post(f"{api}/sweeps", json={"name": f"lat-{i}", "base": BASE, "seeds": [1000 + i]})
    sweep_id = r.json()["sweep_id"]
    POST_S.append(time.perf_counter() - t0)
    with engine.connect() as c:
        _wait(lambda: c.execute(text("SELECT count(*) FROM run WHERE sweep_id = :s AND status <> 'queued'"),
                                {"s": sweep_id}).scalar() == 1, 60, 0.002)
    return time.perf_counter() - t0


def _stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _wait(pred, timeout: float, interval: float = 0.05) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark wait timed out")
        time.sleep(interval)


def bench_metrics(api: str, url: str, runs: int = 1000, per_run: int = 1000, samples: int = 200) -> list[float]:
    """GET /runs/{id}/metrics latency with runs × per_run metric rows in PostgreSQL."""
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    epochs, keys = per_run // 40, [f"k{j:02d}" for j in range(20)]  # (epochs, 2 splits, 20 keys)
    with psycopg.connect(dsn, autocommit=True) as conn:
        sweep = conn.execute("INSERT INTO sweep (name, spec, axes, owner, created_at) VALUES ('m', '{}', '[]', '', now()) "
                             "RETURNING id").fetchone()[0]
        ids = [row[0] for row in conn.execute(
            "INSERT INTO run (sweep_id, kind, spec, spec_hash, grid, seed, options, status, cancel_requested, attempt, "
            "max_attempts, epoch, epochs_total, step, steps_total, created_at, updated_at) "
            "SELECT %s, 'train', '{}', md5(g::text), '{}', g, '{}', 'succeeded', false, 1, 3, 0, 0, 0, 0, now(), now() "
            "FROM generate_series(1, %s) g RETURNING id", (sweep, runs)).fetchall()]
        with conn.cursor().copy("COPY metric (run_id, epoch, split, key, value, metric_version, created_at) FROM STDIN") as cp:
            for rid in ids:
                for e in range(1, epochs + 1):
                    for split in ("train", "test"):
                        for j, k in enumerate(keys):
                            cp.write_row((rid, e, split, k, 1.0 / (e + j), 1, "2026-01-01"))
        conn.execute("ANALYZE metric")
        total = conn.execute("SELECT count(*) FROM metric").fetchone()[0]
    client = httpx.Client(base_url=api)
    for rid in ids[:20]:
        client.get(f"/runs/{rid}/metrics")  # warm-up
    lat = []
    for i in range(samples):
        rid = ids[(i * 7919) % len(ids)]
        t0 = time.perf_counter()
        r = client.get(f"/runs/{rid}/metrics")
        lat.append(time.perf_counter() - t0)
        assert r.status_code == 200 and sum(len(s["values"]) for s in r.json()["series"]) == per_run
    print(f"  metric rows in PostgreSQL: {total:,} ({runs} runs x {per_run} rows)")
    return lat


def machine() -> str:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, {platform.system()} {platform.release()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", default="submit,latency,metrics", help="comma-separated subset to run")
    args = parser.parse_args()
    redis.Redis.from_url(REDIS).flushdb()
    url = fresh_database()
    home = Path(tempfile.mkdtemp())
    env = env_for(url, home)
    port = 18765
    api_proc = start_api(env, port)
    api = f"http://127.0.0.1:{port}"
    try:
        print(f"machine: {machine()}")
        parts = set(args.parts.split(","))
        sub = bench_submit(api, url) if "submit" in parts else []
        sub and print(f"submit 10,000-run sweep (HTTP, PostgreSQL insert, Redis enqueue): median {statistics.median(sub):.2f} s "
              f"(runs {', '.join(f'{t:.2f}' for t in sub)}; goal <= 2 s)")
        for same in ((False, True) if "latency" in parts else ()):
            lat, rt = bench_latency(api, url, env, same)
            ratio = statistics.median(lat) / statistics.median(rt)
            kind = "ncsweep pool settings" if same else "Celery defaults"
            print(f"submit->running, idle worker: median {1000 * statistics.median(lat):.0f} ms "
                  f"({', '.join(f'{1000 * x:.0f}' for x in lat)}); bare Celery round trip ({kind}, redis result "
                  f"backend): median {1000 * statistics.median(rt):.0f} ms; ratio {ratio:.1f}x (goal <= 5x); "
                  f"of which POST /sweeps answered in median {1000 * statistics.median(POST_S[-len(lat):]):.0f} ms")
        if "metrics" in parts:
            m = bench_metrics(api, url)
            q = statistics.quantiles(m, n=100)
            print(f"GET /runs/{{id}}/metrics (1,000 values per run): p50 {1000 * statistics.median(m):.1f} ms, "
                  f"p95 {1000 * q[94]:.1f} ms (goal p50 <= 20 ms)")
    finally:
        _stop(api_proc)
        redis.Redis.from_url(REDIS).flushdb()
        drop_database(url)


if __name__ == "__main__":
    main()
