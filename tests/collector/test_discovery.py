"""Discovery against the emulator with the real ARM SDKs: resources, Claude deployments,
workspaces; deletions recorded, history kept; failures recorded without touching the store."""

from __future__ import annotations

from sqlalchemy import func, select

from collector.jobs import discovery
from models.tables import CollectorRun, Deployment, Resource


def _store(ctx):
    with ctx.engine.connect() as conn:
        resources = {r.arm_id: r for r in conn.execute(select(Resource))}
        deployments = conn.execute(
            select(
                Resource.name, Deployment.name, Deployment.model_name, Deployment.deleted_at
            ).join(Resource, Resource.id == Deployment.resource_id)
        ).all()
    return resources, deployments


def test_discovery_matches_the_world(collector_ctx, emulator) -> None:
    world = emulator.world
    resources, deployments = _store(collector_ctx)
    assert set(resources) == {r.arm_id.lower() for r in world.resources}
    for r in world.resources:
        stored = resources[r.arm_id.lower()]
        assert stored.location == r.location
        assert stored.workspace_customer_id == r.workspace.customer_id
        assert stored.workspace_arm_id == r.workspace.arm_id.lower()
    now = world.now()
    live = {(d.resource.name, d.name) for d in world.active_deployments(now)}
    stored_live = {(res, dep) for res, dep, _model, deleted in deployments if deleted is None}
    assert stored_live == live
    models = {(res, dep): model for res, dep, model, _ in deployments}
    for d in world.active_deployments(now):
        assert models[(d.resource.name, d.name)] == d.model_name


def test_rerun_changes_nothing_and_keeps_first_seen(collector_ctx) -> None:
    before, deps_before = _store(collector_ctx)
    outcomes = discovery.run(collector_ctx)
    assert [o.status for o in outcomes] == ["ok"] * len(outcomes)
    after, deps_after = _store(collector_ctx)
    assert set(after) == set(before)
    assert sorted(deps_after) == sorted(deps_before)
    for arm_id, resource in after.items():
        assert resource.first_seen == before[arm_id].first_seen
        assert resource.last_seen >= before[arm_id].last_seen


def test_vanished_deployment_is_marked_deleted_not_removed(collector_ctx) -> None:
    with collector_ctx.engine.begin() as conn:
        resource_id = conn.execute(select(Resource.id).limit(1)).scalar_one()
        conn.execute(
            Deployment.__table__.insert().values(
                resource_id=resource_id,
                name="retired-deployment",
                first_seen=collector_ctx.clock(),
                last_seen=collector_ctx.clock(),
            )
        )
    discovery.run(collector_ctx)
    with collector_ctx.engine.connect() as conn:
        deleted_at = conn.execute(
            select(Deployment.deleted_at).where(Deployment.name == "retired-deployment")
        ).scalar_one()
    assert deleted_at is not None


def test_arm_failure_is_a_failed_run_with_a_clear_line(collector_ctx, faults) -> None:
    before = _store(collector_ctx)
    faults.add(endpoint="arm", kind="error", status=500, count=None)
    outcomes = discovery.run(collector_ctx)
    assert all(o.status == "failed" for o in outcomes)
    assert all("discovery on /subscriptions/" in o.error and "500" in o.error for o in outcomes)
    assert _store(collector_ctx) == before
    with collector_ctx.engine.connect() as conn:
        failed = conn.execute(
            select(func.count()).where(
                CollectorRun.job == "discovery", CollectorRun.status == "failed"
            )
        ).scalar_one()
        calls = conn.execute(
            select(CollectorRun.api_calls).where(CollectorRun.status == "failed").limit(1)
        ).scalar_one()
    assert failed == len(outcomes)
    assert calls >= 2  # the retry policy tried again before giving up
