"""``garbage retrain``: retrain when new labels or drift make it due, at most once per version.

The one place that wires the collector's store (:mod:`monitoring.store`, :mod:`monitoring.images`),
the drift check (:func:`monitoring.job.drift_flags`), dataset versions
(:mod:`garbage.training.data.versions`), the retrain's rules (:mod:`garbage.training.retrain`)
and the pipeline (:func:`pipelines.local.run_locally`, :func:`pipelines.submit.submit_pipeline`)
together. Retraining never moves the champion alias itself: the pipeline's register step does,
through the promotion gate.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.data import FromOption, StoreSource, build_errors, build_from, store_labels
from cli.options import ConfigOption, SetOption, fail, load
from cli.pipeline import ClusterProfileOption, CpuOnlyOption, TrackingOption, cluster_profile
from pipelines.submit import DEFAULT_EXPERIMENT, DEFAULT_SERVICE_ACCOUNT

if TYPE_CHECKING:
    from garbage.core.config import Config
    from garbage.training.data.versions import BuildResult, DatasetStore
    from garbage.training.retrain import Champion, RetrainDecision
    from monitoring.job import DriftWindow

#: The exit code of bad usage or an invalid config.
USAGE = 2


@dataclasses.dataclass(frozen=True)
class _Cluster:
    """Where and how a retrain runs on Kubeflow Pipelines (the ``--host`` options)."""

    host: str
    experiment: str
    service_account: str
    token: str | None
    timeout: float
    cpu_only: bool


class _Report:
    """What the command found and did: printed as lines, or as one JSON object with --json."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.data: dict[str, Any] = {}

    def say(self, text: str) -> None:
        if not self.as_json:
            typer.echo(text)

    def done(self, outcome: str, code: int = 0) -> typer.Exit:
        self.data["outcome"] = outcome
        if self.as_json:
            typer.echo(json.dumps(self.data, indent=2, default=str))
        return typer.Exit(code)


def retrain(
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            envvar="GARBAGE_MONITORING_DB",
            help="The collector's store (SQLAlchemy URL or SQLite path): its labelled images "
            "count as new labels and join the new version as source retrain.store_source; its "
            "traffic is checked for drift. Without it: neither.",
        ),
    ] = None,
    image_store: Annotated[
        str | None,
        typer.Option(
            "--image-store",
            envvar="GARBAGE_IMAGE_STORE",
            help="Where the collector keeps the images (a folder or s3://bucket/prefix); "
            "default: the folder images beside a SQLite --db.",
        ),
    ] = None,
    from_: FromOption = None,
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            envvar="KFP_HOST",
            help="Kubeflow Pipelines API to run the retrain on (waits for it); default: run "
            "the pipeline here through kfp.local.",
        ),
    ] = None,
    cpu_only: CpuOnlyOption = False,
    service_account: Annotated[
        str, typer.Option(help="With --host: service account of the run's pods.")
    ] = DEFAULT_SERVICE_ACCOUNT,
    experiment: Annotated[
        str, typer.Option(help="With --host: experiment to file the run under.")
    ] = DEFAULT_EXPERIMENT,
    token: Annotated[
        str | None,
        typer.Option(envvar="KFP_TOKEN", help="With --host: bearer token for the endpoint."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="With --host: seconds to wait for the run.", min=1)
    ] = 7200,
    tracking_uri: TrackingOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Decide and say why; build and train nothing.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Retrain whatever the labels and drift say, also on a version retrained before.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    config: ConfigOption = None,
    profile: ClusterProfileOption = None,
    set_: SetOption = None,
) -> None:
    """Retrain when due: enough new labels, or consecutive drifted windows; once per version.

    Looks up the champion and the dataset version it was trained on, counts the store's labels
    that version does not hold, judges the last retrain.drift_windows windows for drift, and
    decides. When due, builds a dataset version (the latest one plus the store's labelled images
    and --from sources), claims it in the ledger retrains/<version>.json under the datasets root
    (a version is retrained once; --force again) and runs the pipeline on it, warm-started from
    the champion. The promotion gate decides whether the new model serves. Exit 0: retrained, or
    not due; 1: failed (the champion keeps serving); 2: bad usage or config.
    """
    from garbage.core.config import ConfigError
    from garbage.training.data.versions import DatasetVersionError, open_store
    from garbage.training.retrain import RetrainError, current_champion
    from monitoring.images import ImageStoreError, default_image_store
    from monitoring.store import StoreError

    report = _Report(as_json)
    cfg = _config(config, profile, set_, host, cpu_only, tracking_uri)
    now = datetime.now(UTC).replace(tzinfo=None)  # the store keeps naive UTC times
    images = image_store or (default_image_store(db, cfg.work_dir) if db else None)
    try:
        store = open_store(cfg)
        if host and store.is_local:
            raise fail(
                f"the datasets root {store.location} is a local folder, which the cluster's "
                "pods cannot read: set data.datasets_root to a shared bucket (s3://...)",
                code=USAGE,
            )
        champion = current_champion(cfg)
        _say_champion(report, champion)
        new_labels = _new_labels(report, store, champion, db, images, cfg, now)
        flags = _drift(report, cfg, champion, db, now)
        decision = _decide(report, cfg, champion, new_labels, flags, force)
    except (RetrainError, DatasetVersionError, StoreError, ImageStoreError, ValueError) as e:
        raise fail(str(e)) from e
    if not decision.due:
        report.say("nothing to do: no retrain is due")
        raise report.done("not due")
    if dry_run:
        report.say("dry run: a retrain is due; nothing built, nothing trained")
        raise report.done("dry run")
    built = _build(report, cfg, store, db, images, from_ or [], now)
    if champion is not None and built.name == champion.data_version and not force:
        report.say(
            f"nothing new: {built.name} is the dataset version champion v{champion.version} was "
            "trained on; nothing to train (--force trains on it again)"
        )
        raise report.done("nothing new")
    try:
        pipeline_config = _pipeline_config(cfg, built.name, champion, host, tracking_uri)
    except ConfigError as e:
        raise fail(str(e), code=USAGE) from e
    cluster = (
        _Cluster(host, experiment, service_account, token, timeout, cpu_only) if host else None
    )
    _run(report, pipeline_config, store, built.name, champion, decision, force, cluster)


def _config(
    path: Path | None,
    profile: str | None,
    overrides: list[str] | None,
    host: str | None,
    cpu_only: bool,
    tracking_uri: str | None,
) -> Config:
    """The validated config; its registry is the one the pipeline's steps use.

    On a cluster (``host``) the profile defaults as ``garbage pipeline submit`` has it, and the
    registry is the cluster's (:func:`pipelines.submit.cluster_config`): the champion is read
    from the server the steps register to.
    """
    from pipelines.submit import cluster_config

    cfg = load(
        path, cluster_profile(profile, cpu_only) if host else profile or "default", overrides
    )
    if host:
        return cfg.model_copy(update={"registry": cluster_config(cfg, tracking_uri).registry})
    if tracking_uri:
        registry = cfg.registry.model_copy(update={"tracking_uri": tracking_uri})
        return cfg.model_copy(update={"registry": registry})
    return cfg


def _say_champion(report: _Report, champion: Champion | None) -> None:
    if champion is None:
        report.data["champion"] = None
        report.say("champion: none yet")
        return
    report.data["champion"] = dataclasses.asdict(champion)
    data = champion.data_version or "the plain archive (no dataset version)"
    report.say(f"champion: v{champion.version} ({champion.uri}), trained on {data}")


def _min_age(cfg: Config) -> timedelta | None:
    from monitoring.accuracy import parse_window

    age = cfg.retrain.min_label_age
    return None if age is None else parse_window(age)


def _new_labels(
    report: _Report,
    store: DatasetStore,
    champion: Champion | None,
    db: str | None,
    images: str | None,
    cfg: Config,
    now: datetime,
) -> int:
    """Count the store's labels the champion's version does not hold; 0 without ``db``."""
    from garbage.training.data.versions import VersionNotFoundError
    from garbage.training.retrain import RetrainError, count_new_labels, held_labels

    if db is None or images is None:
        report.data["new_labels"] = 0
        report.say("new labels: not counted (no --db: no collector's store named)")
        return 0
    skipped: Counter[str] = Counter()
    labelled = store_labels(db, images, _min_age(cfg), skipped, now)
    since = champion.data_version if champion else None
    try:
        held = held_labels(store, since)
    except VersionNotFoundError as e:
        raise RetrainError(
            f"the champion was trained on {since}, which is not under the datasets root "
            f"{store.location}: set data.datasets_root to the root it was built in"
        ) from e
    count = count_new_labels(labelled, held)
    detail = ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())) or "none skipped"
    report.data["new_labels"] = count
    report.data["labels_skipped"] = dict(skipped)
    report.say(
        f"new labels: {count} of {len(labelled)} labelled images of {db} "
        f"{_held_by(champion)}; {detail}"
    )
    return count


def _held_by(champion: Champion | None) -> str:
    if champion is None:
        return "(no champion yet: every label is new)"
    if champion.data_version is None:
        return "(the champion was trained on the plain archive: every label is new)"
    return f"not in {champion.data_version} as labelled"


def _drift(
    report: _Report, cfg: Config, champion: Champion | None, db: str | None, now: datetime
) -> list[bool]:
    """The drift flags of the last ``retrain.drift_windows`` windows, newest first.

    Empty (and the output says why) without a store, without a champion, or when the
    champion cannot be judged (no reference profile).
    """
    from garbage.core.classifier import ModelLoadError
    from garbage.core.model_uri import resolve_model_dir
    from monitoring.drift import DriftInputError
    from monitoring.job import DriftJobError, drift_flags
    from monitoring.reference import ReferenceProfileError

    settings = cfg.retrain
    report.data["drift"] = {"checked": False, "windows": []}
    if db is None or champion is None:
        why = "no --db: no collector's store named" if db is None else "no champion to compare"
        report.data["drift"]["note"] = why
        report.say(f"drift: not checked ({why})")
        return []
    try:
        model_dir = resolve_model_dir(champion.uri, cfg)
        windows = drift_flags(
            db, model_dir, window=settings.drift_window, count=settings.drift_windows, now=now
        )
    except (ModelLoadError, ReferenceProfileError, DriftInputError, DriftJobError) as e:
        report.data["drift"]["note"] = str(e)
        report.say(f"drift: not checked (champion v{champion.version} cannot be judged: {e})")
        return []
    report.data["drift"] = {
        "checked": True,
        "windows": [dataclasses.asdict(w) for w in windows],
    }
    report.say(f"drift: the last {len(windows)} windows of {settings.drift_window}, newest first")
    for window in windows:
        report.say(f"  {_window_text(window)}")
    return [w.drifted for w in windows]


def _window_text(window: DriftWindow) -> str:
    span = f"{window.start:%Y-%m-%d %H:%M} to {window.end:%Y-%m-%d %H:%M}"
    return f"{span}: {window.rows} rows: {window.reason}"


def _decide(
    report: _Report,
    cfg: Config,
    champion: Champion | None,
    new_labels: int,
    flags: list[bool],
    force: bool,
) -> RetrainDecision:
    from garbage.training.retrain import decide_retrain

    since = champion.data_version if champion else None
    decision = decide_retrain(new_labels, flags, cfg.retrain, since=since, force=force)
    report.data["decision"] = {"due": decision.due, "reasons": list(decision.reasons)}
    report.say(f"decision: {'retrain due' if decision.due else 'not due'}")
    for reason in decision.reasons:
        report.say(f"  - {reason}")
    return decision


def _build(
    report: _Report,
    cfg: Config,
    store: DatasetStore,
    db: str | None,
    images: str | None,
    from_: list[str],
    now: datetime,
) -> BuildResult:
    """Build the version to retrain on, as ``garbage data build`` does (exit 1 on failure).

    Parent: the latest version. Sources: ``retrain.base_sources`` when there is no version yet,
    the ``--from`` sources, and the store's labelled images as ``retrain.store_source``.
    """
    from garbage.training.data.versions import describe_version, resolve_version

    skipped: Counter[str] = Counter()
    source = None
    if db is not None and images is not None:
        source = StoreSource(db, images, cfg.retrain.store_source, _min_age(cfg))
    try:
        parent = resolve_version(store, "latest")
        specs = [*(cfg.retrain.base_sources if parent is None else []), *from_]
        built, _ = build_from(cfg, store, parent, specs, source, skipped, now=now)
    except build_errors() as e:
        raise fail(f"cannot build the dataset version to retrain on: {e}") from e
    report.data["version"] = {
        "name": built.name,
        "created": built.created,
        "parent": parent,
        "counts": built.info.get("counts"),
        "changes": {
            k: v for k, v in built.info.get("changes", {}).items() if k in ("added", "removed")
        },
    }
    report.say("")
    report.say(describe_version(built.info, created=built.created).rstrip("\n"))
    return built


def _pipeline_config(
    cfg: Config, version: str, champion: Champion | None, host: str | None, tracking: str | None
) -> Config:
    """The retrain's config, as the pipeline's steps see it (on a cluster: its pods)."""
    from garbage.training.retrain import retrain_config, warm_start_uri
    from pipelines.submit import cluster_config

    run_config = retrain_config(cfg, version, warm_start_uri(cfg, champion))
    return cluster_config(run_config, tracking) if host else run_config


def _run(
    report: _Report,
    pipeline_config: Config,
    store: DatasetStore,
    version: str,
    champion: Champion | None,
    decision: RetrainDecision,
    force: bool,
    cluster: _Cluster | None,
) -> None:
    """Claim the version in the ledger, run the pipeline, record how it ended; exit."""
    from garbage.training.retrain import (
        FAILED,
        RUNNING,
        SUCCEEDED,
        claim_retrain,
        finish_retrain,
        ledger_path,
        now_text,
        read_retrain,
    )
    from pipelines.local import PipelineFailed
    from pipelines.submit import SubmitError

    record = {
        "version": version,
        "started": now_text(),
        "champion_before": champion.version if champion else None,
        "trigger": list(decision.reasons),
        "state": RUNNING,
        "host": cluster.host if cluster else "local",
        "init_from": pipeline_config.train.init_from,
    }
    if not claim_retrain(store, record, overwrite=force):
        earlier = read_retrain(store, version) or {}
        report.data["ledger"] = earlier
        report.say(
            f"{version} was retrained already: started {earlier.get('started', '?')} on "
            f"{earlier.get('host', '?')}, state {earlier.get('state', '?')} "
            f"({ledger_path(version)}); --force retrains again"
        )
        raise report.done("retrained already")
    report.say(f"\nretrain of {version} claimed: {ledger_path(version)} under {store.location}")
    serving = (
        f"champion v{champion.version} keeps serving" if champion else "no champion serves yet"
    )
    gate: dict[str, Any] | None = None
    try:
        if cluster is not None:
            gate = _run_on_cluster(report, pipeline_config, cluster)
        else:
            gate = _run_here(report, pipeline_config)
    except (PipelineFailed, SubmitError) as e:
        report.data["ledger"] = finish_retrain(store, version, state=FAILED, error=str(e))
        report.data["gate"] = None
        stop = report.done("failed", code=1)
        typer.secho(f"{e}\n{serving}", fg=typer.colors.RED, err=True)
        raise stop from e
    except BaseException as e:
        finish_retrain(store, version, state=FAILED, error=f"{type(e).__name__}: {e}")
        raise
    fields: dict[str, Any] = {"state": SUCCEEDED}
    if cluster is not None:
        fields["run"] = gate
    elif gate is not None:
        fields.update(
            registered_version=gate.get("version"),
            promoted=bool(gate.get("promote")),
            gate_reason=gate.get("reason"),
        )
    report.data["ledger"] = finish_retrain(store, version, **fields)
    report.data["gate"] = gate
    report.say(f"ledger {ledger_path(version)}: {SUCCEEDED}")
    raise report.done("retrained")


def _run_here(report: _Report, pipeline_config: Config) -> dict[str, Any] | None:
    """Run the pipeline through kfp.local; the gate's ``decision.json`` (None if unreadable)."""
    from pipelines import local

    report.say(f"tracking: {pipeline_config.mlflow_tracking_uri}")
    decision_md = local.run_locally(pipeline_config, out=sys.stderr if report.as_json else None)
    try:
        report.say(decision_md.read_text())
        gate: dict[str, Any] = json.loads(local.gate_record(decision_md).read_text())
    except (OSError, json.JSONDecodeError) as e:
        report.say(f"the gate's decision cannot be read: {e}")
        return None
    return gate


def _run_on_cluster(report: _Report, pipeline_config: Config, cluster: _Cluster) -> dict[str, Any]:
    """Submit the pipeline to Kubeflow Pipelines and wait; the run as ``submit_pipeline`` says."""
    from pipelines.submit import submit_pipeline

    report.say(f"submitting to {cluster.host} and waiting (at most {cluster.timeout:g} s)")
    result = submit_pipeline(
        cluster.host,
        pipeline_config,
        experiment=cluster.experiment,
        service_account=cluster.service_account or None,
        cpu_only=cluster.cpu_only,
        wait=True,
        timeout_s=cluster.timeout,
        existing_token=cluster.token,
    )
    run = dataclasses.asdict(result)
    report.say(f"run {result.run_id}: {result.state} ({result.run_url})")
    return run
