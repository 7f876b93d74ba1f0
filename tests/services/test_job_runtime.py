"""The job runtime owns every lifecycle: the only writer of job rows, the shapes kinds declare (single, chain,
group), the facts callers query as indexed columns, and the jobs.read / jobs.cancel actions every door calls.

Redis is real (one server for the module); no worker runs: the tests call what a worker would call.
"""

from __future__ import annotations

import ast
import json
import sqlite3
import threading
import time
import uuid

import pytest
from rq.job import JobStatus

from engine.exceptions import Cancelled, Conflict, NotFound
from services.app import jobs as job_actions
from services.app.quotas import InsufficientStorage, TooManyJobs, active_jobs, reserved_bytes
from services.app.rules import Actor, Forbidden
from services.jobs import runtime as jobs
from services.jobs.runtime import JobContext, job_kind
from services.platform.config import REPO_ROOT, Config
from services.storage.rows import Model
from services.storage.store import MIGRATIONS, open_store

CHAIN, MEMBER, GROUP, GROUP_MEMBER = "test-rt-chain", "test-rt-member", "test-rt-group", "test-rt-group-member"


@job_kind(CHAIN, timeout=60, result_ttl=900, shape="chain", members=MEMBER, description="a chain (tests only)")
def chain_parent(ctx: JobContext, params: dict) -> dict:
    """Sum up the members: what the catalog keeps once the chain has ended."""
    return {"members": [ctx.store.get_job(j)["status"] for j in jobs.chain_members(ctx.config, ctx.job_id)],
            "wanted": params["wanted"]}


@job_kind(MEMBER, timeout=60, result_ttl=900, description="a chain's member (tests only)")
def chain_member(ctx: JobContext, params: dict) -> dict:
    return {"index": params["index"]}


@job_kind(GROUP, timeout=60, shape="group", members=GROUP_MEMBER, description="a group (tests only)")
def group_first(ctx: JobContext, params: dict) -> dict:
    return {}


@job_kind(GROUP_MEMBER, timeout=60, description="a group's member (tests only)")
def group_member(ctx: JobContext, params: dict) -> dict:
    return {}


# ------------------------------------------------------------------------------------- one writer
JOB_WRITERS = {"create_job", "update_job", "append_history"}  # the Store's methods that write a job's row
RUNTIME_HOMES = ("services/jobs/", "services/storage/")


def job_row_writes(path) -> list[str]:
    """``file:line name`` of every call of a job-writing Store method, and every SQL text that writes jobs."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in JOB_WRITERS:
            found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.func.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            sql = " ".join(node.value.upper().split())
            if any(verb in sql for verb in ("UPDATE JOBS ", "INSERT INTO JOBS", "DELETE FROM JOBS")):
                found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} SQL")
    return found


def product_files():
    for folder in ("services", "pages"):
        yield from sorted((REPO_ROOT / folder).rglob("*.py"))
    yield from (REPO_ROOT / name for name in ("app.py", "ui_app.py") if (REPO_ROOT / name).exists())


def test_no_module_outside_the_runtime_writes_a_jobs_row():
    writes = [w for path in product_files() for w in job_row_writes(path)]
    outside = [w for w in writes if not w.startswith(RUNTIME_HOMES)]
    assert outside == [], "only services/jobs/ writes a job's state: " + ", ".join(outside)
    # The walk is not blind: it sees the runtime's own writes.
    assert {w.split()[-1] for w in writes if w.startswith("services/jobs/runtime.py")} == JOB_WRITERS


def test_the_runtime_imports_no_kind_module():
    """Reading a job needs no kind's code (a chain's parent is known by its row), so runtime <-> kinds is no
    cycle, and a page reads jobs without importing the ML stack."""
    tree = ast.parse((REPO_ROOT / "services/jobs/runtime.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(name.startswith(("services.jobs.kinds", "services.app.training", "services.app.tuning"))
                   for name in imported)


# ---------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize(("shape", "members", "problem"), [
    ("ring", None, "unknown shape 'ring'; known: single, chain, group"),
    ("chain", None, "names the kind of its members"),
    ("single", MEMBER, "names the kind of its members")])
def test_a_kind_declares_a_known_shape(shape, members, problem):
    with pytest.raises(ValueError, match=problem):
        job_kind("test-rt-bad", timeout=10, shape=shape, members=members)


def test_the_products_kinds_declare_their_shapes():
    from services.jobs.kinds import load_job_kinds

    kinds = load_job_kinds(Config())
    assert (kinds["tune"].shape, kinds["tune"].members) == ("chain", "tune-trial")  # a study: trials in turn
    assert (kinds["train"].shape, kinds["train"].members) == ("group", "train_node")  # a run over machines
    assert {kinds[k].shape for k in ("generate", "import_dataset", "tune-trial", "train_node")} == {"single"}


# --------------------------------------------------------------------------------- indexed facts
def old_catalog(tmp_path, rows: list[tuple[str, str, dict, str, str]]) -> None:
    """A catalog at the schema before the job facts became columns, holding ``rows``."""
    conn = sqlite3.connect(tmp_path / "catalog.sqlite3")
    for number, script in enumerate(MIGRATIONS[:5], start=1):
        conn.executescript(script)
        conn.execute(f"PRAGMA user_version = {number}")
    for i, (job_id, kind, params, owner, status) in enumerate(rows):
        conn.execute("INSERT INTO jobs (id, kind, params, created_by, status, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                     (job_id, kind, json.dumps(params), owner, status, 10.0 + i))
    conn.commit()
    conn.close()


def query_plan(store, sql: str, args: tuple) -> str:
    with store.connect(write=False) as conn:
        return " ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args).fetchall())


def test_the_migration_moves_job_facts_into_indexed_columns(tmp_path):
    old_catalog(tmp_path, [
        ("t1", "train", {"dataset": "hdf5", "hdf5_path": "./shapes.hdf5"}, "op", "started"),
        ("t2", "train", {"dataset": "custom", "hdf5_path": "shapes.hdf5", "trainset_dir": "a"}, "op", "queued"),
        ("t3", "train", {"dataset": "hdf5", "hdf5_path": "sub/shapes.hdf5"}, "op", "queued"),
        ("g1", "generate", {"name": "made", "reserved_bytes": 5_000}, "op", "queued"),
        ("s1", "tune", {"dataset": "hdf5", "hdf5_path": "shapes.hdf5"}, "op", "started")])
    store = open_store(tmp_path)
    facts = {j.id: (j.dataset, j.reserved_bytes, j.shape) for j in store.list_jobs()}
    assert facts == {"t1": ("shapes", 0, "single"), "t2": (None, 0, "single"), "t3": (None, 0, "single"),
                     "g1": ("made", 5_000, "single"), "s1": ("shapes", 0, "chain")}
    assert "jobs_owner_status" in query_plan(store, "SELECT COUNT(*) FROM jobs WHERE created_by = ? AND status IN "
                                                    "(?, ?)", ("op", "queued", "started"))
    assert "jobs_dataset_status" in query_plan(store, "SELECT * FROM jobs WHERE dataset = ? AND status = ?",
                                               ("shapes", "queued"))
    assert "jobs_status_reserved" in query_plan(store, "SELECT SUM(reserved_bytes) FROM jobs WHERE status IN "
                                                       "(?, ?)", ("queued", "started"))
    assert active_jobs(store, "op") == 5 and reserved_bytes(store) == 5_000


def test_disk_reservations_are_held_in_the_column_while_a_job_runs(tmp_path):
    config = Config(data_dir=tmp_path)
    store = open_store(tmp_path)
    store.create_job("gen", "generate", {"name": "g", "reserved_bytes": 1_000}, "op")
    store.create_job("imp", "import_dataset", {"name": "i"}, "op")
    JobContext("imp", config, store).reserve_disk(2_000, "image_size", "a small dataset")
    assert store.get_job("imp").reserved_bytes == 2_000 and reserved_bytes(store) == 3_000
    assert reserved_bytes(store, but="imp") == 1_000
    with pytest.raises(InsufficientStorage, match="'image_size': a huge dataset; the disk has") as refused:
        JobContext("imp", config, store).reserve_disk(2**62, "image_size", "a huge dataset", "ask for less")
    assert refused.value.field == "image_size" and "ask for less" in str(refused.value)
    store.update_job("gen", status="finished")  # an ended job holds no reservation
    assert reserved_bytes(store) == 2_000


def test_a_dataset_in_use_is_found_by_its_column(tmp_path):
    from services.app import datasets

    config, store = Config(data_dir=tmp_path), open_store(tmp_path)
    store.create_job("reads", "train", {"dataset": "hdf5", "hdf5_path": "./shapes.hdf5"}, "op")
    store.create_job("imports", "import_dataset", {"name": "shapes"}, "op")
    store.create_job("subfolder", "train", {"dataset": "hdf5", "hdf5_path": "old/shapes.hdf5"}, "op")
    store.create_job("other", "train", {"dataset": "hdf5", "hdf5_path": "digits.hdf5"}, "op")
    store.create_job("trained", "train", {"dataset": "hdf5", "hdf5_path": "shapes.hdf5"}, "op")
    store.update_job("trained", status="finished")
    store.update_job("imports", status="started")
    store.add_model(Model(id="m1", model_name="lenet5", path="checkpoints/trained/best.pt", job_id="trained",
                          created_at=1.0))
    assert datasets.references(config, store, "shapes") == [
        "train job reads (queued)", "import_dataset job imports (started)", "model m1 (lenet5)"]
    assert datasets.references(config, store, "digits") == ["train job other (queued)"]


# ------------------------------------------------------------ with Redis (in memory: tests/conftest.py)
@pytest.fixture(scope="module")
def redis_config(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("runtime") / "data"
    config = Config(data_dir=data_dir, max_active_jobs_per_user=4)
    config.ensure_dirs()
    return config


@pytest.fixture
def studio(redis_config, monkeypatch):
    """The module's Redis and catalog, an operator of its own per test, and the environment a worker reads."""
    monkeypatch.setenv("DATA_DIR", str(redis_config.data_dir))
    monkeypatch.setenv("REDIS_URL", redis_config.effective_redis_url)
    store = open_store(redis_config.data_dir)
    name = f"op_{uuid.uuid4().hex[:8]}"
    store.create_user(name, "operator-pass-123", "operator")
    return redis_config, store, name


def open_test_chain(config, store, owner: str, wanted: int = 3) -> str:
    return jobs.open_chain(config, store, CHAIN, {"wanted": wanted}, owner, slots=3, setup=lambda chain_id: None)


def advance(config, store, chain_id: str, ended: str | None = None) -> None:
    jobs.advance_chain(config, store, chain_id, total=3, parallel=2, unit="member",
                       member_params=lambda index: {"index": index}, ended_member=ended)


def end(store, job_id: str, status: str = "finished") -> None:
    store.update_job(job_id, status=status, ended_at=time.time())  # as the member's own wrapper would


def test_a_chain_runs_its_members_in_turn_and_its_parent_ends_with_them(studio):
    config, store, owner = studio
    chain = open_test_chain(config, store, owner)
    row = store.get_job(chain)
    assert (row.status, row.shape, row.created_by) == ("started", "chain", owner) and row.started_at
    parked = jobs.fetch_job(jobs.redis_connection(config.effective_redis_url), chain)
    assert parked.get_status() == JobStatus.DEFERRED
    # No worker holds the parent while its members run: it still reads as started, not interrupted.
    assert jobs.read_job(config, store, row).status == "started"

    advance(config, store, chain)
    first, second = jobs.chain_members(config, chain)
    assert [store.get_job(j).created_by for j in (first, second)] == [owner, owner]
    assert store.get_job(chain).progress == {"done": 0, "total": 3, "unit": "member", "running": 2, "fraction": 0.0}
    end(store, first)
    advance(config, store, chain, ended=first)
    third = jobs.chain_members(config, chain)[2]
    assert store.get_job(third).params == {"index": 2}
    for member in (second, third):
        end(store, member)
        advance(config, store, chain, ended=member)
    assert len(jobs.chain_members(config, chain)) == 3  # never more than total
    assert parked.get_status(refresh=True) == JobStatus.QUEUED  # handed to the queue once the last member ended

    jobs.JOB_KINDS[CHAIN].func(chain, store.get_job(chain).params)  # what the worker runs
    ended = store.get_job(chain)
    assert ended.status == "finished" and ended.result == {"members": ["finished"] * 3, "wanted": 3}
    assert ended.started_at == row.started_at  # started at its opening, not when its job ran
    ttl = jobs.redis_connection(config.effective_redis_url).ttl(jobs.MEMBERS_KEY.format(chain))
    assert 0 < ttl <= 900  # the member list leaves Redis with the chain's result


def test_a_stopped_chain_cancels_its_queued_members_and_is_summed_up_without_its_job(studio):
    config, store, owner = studio
    chain = open_test_chain(config, store, owner)
    advance(config, store, chain)
    running, queued = jobs.chain_members(config, chain)
    store.update_job(running, status="started")
    jobs.stop_chain(config, store, chain)
    assert store.get_job(queued).status == "cancelled" and store.get_job(chain).status == "cancelled"
    assert JobContext(running, config, store).should_stop() is False  # the member checks its chain's flag
    assert jobs.stop_requested(config, chain)
    advance(config, store, chain)
    assert len(jobs.chain_members(config, chain)) == 2 and store.get_job(chain).result is None  # one still runs
    end(store, running, "cancelled")
    advance(config, store, chain, ended=running)
    assert store.get_job(chain).result == {"members": ["cancelled", "cancelled"], "wanted": 3}


def test_a_chain_takes_its_quota_slots_at_its_opening(studio):
    config, store, owner = studio
    store.create_job(uuid.uuid4().hex, MEMBER, {}, owner)
    store.create_job(uuid.uuid4().hex, MEMBER, {}, owner)
    with pytest.raises(TooManyJobs, match="you have 2 queued or running jobs and this needs 3"):
        jobs.open_chain(config, store, CHAIN, {"wanted": 3}, owner, slots=3, setup=lambda chain_id: None,
                        field="parallel")
    assert active_jobs(store, owner) == 2  # nothing was recorded


def test_a_chain_that_cannot_be_set_up_is_recorded_failed(studio):
    config, store, owner = studio

    def broken(chain_id: str) -> None:
        raise ConnectionError("no storage")

    with pytest.raises(ConnectionError):
        jobs.open_chain(config, store, CHAIN, {"wanted": 1}, owner, slots=1, setup=broken)
    (row,) = store.list_jobs(kind=CHAIN, created_by=owner)
    assert row.status == "failed" and row.error == f"could not open the {CHAIN} job in Redis (ConnectionError)"


def test_a_group_is_submitted_whole_and_its_members_meet(studio):
    config, store, owner = studio
    group = jobs.submit_group(config, store, GROUP, {"n": 1}, owner, 3, lambda gid, rank: {"of": gid, "rank": rank})
    members = [j for j in store.list_jobs(kind=GROUP_MEMBER, created_by=owner)]
    assert sorted(m.params["rank"] for m in members) == [1, 2] and {m.params["of"] for m in members} == {group}
    with pytest.raises(TooManyJobs):  # 3 active + 3 more > 4: nothing of the group is recorded
        jobs.submit_group(config, store, GROUP, {"n": 2}, owner, 3, lambda gid, rank: {"rank": rank})
    assert active_jobs(store, owner) == 3

    first = JobContext(group, config, store).rendezvous(group)
    other = JobContext(members[0].id, config, store).rendezvous(group, wait_s=10)
    found: list = []
    waiter = threading.Thread(target=lambda: found.append(other.lookup()))
    waiter.start()
    time.sleep(0.3)
    first.publish(first.host, 29500)
    waiter.join(10)
    assert found == [(first.host, 29500)]


def test_a_member_stops_waiting_for_a_first_member_that_never_comes(studio):
    config, store, owner = studio
    lonely = jobs.submit(config, store, GROUP_MEMBER, {}, owner)
    jobs.request_stop(config, lonely)
    with pytest.raises(Cancelled, match="never started"):
        JobContext(lonely, config, store).rendezvous(uuid.uuid4().hex).lookup()


def test_a_resumed_run_starts_its_history_with_the_earlier_epochs(studio):
    config, store, owner = studio
    job_id = jobs.submit(config, store, MEMBER, {}, owner)
    ctx = JobContext(job_id, config, store)
    ctx.record_history([{"epoch": 1, "epochs": 3}, {"epoch": 2, "epochs": 3}])
    ctx.epoch({"epoch": 3, "epochs": 3, "test_accuracy": 0.5})
    row = store.get_job(job_id)
    assert [h["epoch"] for h in row.history] == [1, 2, 3] and row.progress["fraction"] == 1.0


# ------------------------------------------------------------------------------ jobs.read, jobs.cancel
def test_a_client_reads_its_own_jobs_only_and_another_users_job_reads_as_missing(studio):
    config, store, owner = studio
    client = f"cl_{uuid.uuid4().hex[:8]}"
    store.create_user(client, "client-pass-123", "client")
    mine, theirs = jobs.submit(config, store, MEMBER, {}, client), jobs.submit(config, store, MEMBER, {}, owner)
    as_client, as_operator = Actor(store.get_user(client), config, store), Actor(store.get_user(owner), config, store)
    assert [j["id"] for j in job_actions.read_jobs(as_client, job_actions.JobsQuery(kind=MEMBER))] == [mine]
    assert theirs in [j["id"] for j in job_actions.read_jobs(as_operator, job_actions.JobsQuery(kind=MEMBER))]
    with pytest.raises(NotFound) as hidden:
        job_actions.read_job(as_client, theirs)
    with pytest.raises(NotFound) as missing:
        job_actions.read_job(as_client, "no-such-job")
    assert str(hidden.value) == f"no job '{theirs}'" and missing.value.field == hidden.value.field == "job_id"
    assert job_actions.job_kinds(as_client) == [MEMBER]
    # The Socket.IO subscription asks the same rule.
    assert job_actions.may_read_job(as_client.user, store.get_job(mine))
    assert not job_actions.may_read_job(as_client.user, store.get_job(theirs))
    with pytest.raises(Forbidden, match="role 'client' may not cancel jobs"):
        job_actions.cancel_job(as_client, mine)


def test_cancelling_an_ended_job_is_a_conflict_and_a_queued_one_ends_cancelled(studio):
    config, store, owner = studio
    operator = Actor(store.get_user(owner), config, store)
    queued = jobs.submit(config, store, MEMBER, {}, owner)
    assert job_actions.cancel_job(operator, queued)["status"] == "cancelled"
    with pytest.raises(Conflict, match=rf"job '{queued}' has already ended \(cancelled\)"):
        job_actions.cancel_job(operator, queued)
