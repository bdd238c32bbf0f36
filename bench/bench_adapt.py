"""Site-adaptation benchmark: how far k labels per class lift the champion on a new site's photos.

    .venv/bin/python bench/bench_adapt.py            # make bench-adapt; about an hour on 2 cores
    .venv/bin/python bench/bench_adapt.py --quick    # smoke profile, a few images: a few minutes

Every part is the real one, each in its own process on 127.0.0.1:

1. The champion: the one registered in the work dir (``work/bench-adapt``, its SQLite MLflow),
   else trained there once by ``garbage pipeline run`` (``--retrain-champion`` forces it).
2. The site: RealWaste (``../shared/data/realwaste-200-dev.tar.gz``, TrashNet's six classes), split
   per class with a seed: 60 % traffic, 40 % held out (never sent anywhere).
3. Traffic: the collector (``python -m monitoring collector``, its SQLite store and image store in
   the work dir) and ``garbage serve --model <champion> --logger-url <collector>/events``; every
   traffic image goes through the server's REST v1 API (a few requests at a time) until the
   collector has stored them all. Both are stopped; this store is shared by every loop.
4. One loop per k (``--k``, default 10 25 50 100), in its own folder with a copy of that store and
   its own datasets root, the registry's champion alias put back on the original champion first:
   ``garbage review --per-class k --format labelstudio``; a scripted annotator fetches each task's
   image from the collector and answers with the archive's label of the same bytes (by sha256),
   in Label Studio's export format; ``garbage labels import`` (the collector's ``/feedback``, with
   a token); ``garbage retrain --db <copy> --json`` (a dataset version of TrashNet plus the
   labelled site images, the pipeline through kfp.local warm-started from the champion, the
   promotion gate). The new version's exported model is copied to ``k<k>/model``.
5. Scores, the same images before and after: accuracy and macro-F1 on the held-out site images;
   accuracy on the TrashNet test split the champion was evaluated on (from its run's split
   manifest; checked to hold no image the champion or an adapted model trained on).

Writes ``bench/results/adapt.json`` and ``bench/results/adapt.md``. ``--quick`` checks the script
in a few minutes: smoke profile, a small TrashNet archive (20 images a class) made in its own work
dir (``work/bench-adapt-quick``), 10 site images a class, k = 2; results into that work dir.
Targets on 2 CPU cores: site accuracy >= 85 % with k = 100 and >= 75 % with k = 25; TrashNet test
accuracy at most 1 point below the unadapted champion's; one loop in at most 20 minutes.
"""

from __future__ import annotations

import argparse
import collections
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.bench_faults import PREDICT, TOKEN, CollectorProcess, ServerProcess, v1_body  # noqa: E402
from bench.machine import describe_machine  # noqa: E402

RESULTS = REPO / "bench" / "results"
DATA = REPO.parent / "shared" / "data"
TRASHNET = DATA / "trashnet-112-dev.tar.gz"
TRASHNET_SHA256 = "cb0934a9c4e8c36e8cf510364a57c55f006eabc831a9c5a78194c8059155cb08"
SITE = DATA / "realwaste-200-dev.tar.gz"
SITE_SHA256 = "90fa32b3b38aae6d3a4cff57c8a4b823a12b6f161b5516fd3a0a6a793992a3af"
DEFAULT_KS = (10, 25, 50, 100)
QUICK_KS = (2,)
QUICK_SITE_PER_CLASS = 10
#: --quick trains on this many TrashNet images a class (a small archive made from the dev one).
QUICK_TRASHNET_PER_CLASS = 20
#: Environment variables that would send a subprocess to another work dir, registry or store.
FOREIGN_ENV = (
    "GARBAGE_WORK_DIR",
    "MLFLOW_TRACKING_URI",
    "GARBAGE_MONITORING_DB",
    "GARBAGE_IMAGE_STORE",
    "GARBAGE_COLLECTOR_URL",
    "GARBAGE_COLLECTOR_TOKEN",
    "GARBAGE_DATA_SOURCE",
    "GARBAGE_DATA_SHA256",
)
#: Site accuracy wanted per k, and the other targets (fixed before any measurement).
SITE_ACCURACY_TARGETS = {100: 0.85, 25: 0.75}
TRASHNET_MAX_DROP = 0.01
LOOP_MAX_SECONDS = 20 * 60


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and where its log is."""


def say(text: str) -> None:
    """One progress line, with the time of day."""
    print(f"[{datetime.now():%H:%M:%S}] {text}", flush=True)


@dataclass(frozen=True)
class Settings:
    """What one run of the benchmark does, and where.

    Attributes:
        work: The work dir (registry, champion, traffic state, one folder per loop).
        profile: The config profile of training and retraining.
        ks: Labels per predicted class, one loop each.
        traffic_share: Share of each site class sent as traffic (the rest is held out).
        seed: Seed of the site split.
        site_per_class: Site images per class used at all (None: every one).
        trashnet: The TrashNet archive (``data.source``) of the champion and the retrains.
        trashnet_sha256: Its sha256 (``data.sha256``).
        concurrency: Requests in flight at once while sending traffic.
        retrain_champion: Train a champion even when one is registered.
        quick: The --quick check of the script.
        out: Where adapt.json and adapt.md go.
    """

    work: Path
    profile: str
    ks: tuple[int, ...]
    traffic_share: float
    seed: int
    site_per_class: int | None
    trashnet: Path
    trashnet_sha256: str
    concurrency: int
    retrain_champion: bool
    quick: bool
    out: Path

    def overrides(self, *more: str) -> list[str]:
        """``--set`` values every command of the run shares, then ``more``."""
        return [
            f"work_dir={self.work}",
            f"data.source={self.trashnet}",
            f"data.sha256={self.trashnet_sha256}",
            *more,
        ]


@dataclass(frozen=True)
class Image:
    """One image of an archive: its bytes, its class folder and its content hash."""

    sha256: str
    label: str
    name: str
    data: bytes


@dataclass
class Champion:
    """The unadapted model every loop starts from."""

    version: str
    run_id: str
    model_dir: Path
    reused: bool


@dataclass
class TestSlice:
    """The TrashNet test images, as the champion's split manifest names them."""

    images: list[Image]
    description: str
    checks: dict[str, Any] = field(default_factory=dict)


# -- subprocesses -------------------------------------------------------------------------------


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without :data:`FOREIGN_ENV`, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    return {**env, **(extra or {})}


def drop_foreign_env() -> None:
    """Remove :data:`FOREIGN_ENV` from this process's environment.

    The collector and the server (:mod:`bench.bench_faults`) inherit it: none of them may read
    another store, image store or registry than the ones this benchmark names.
    """
    for name in FOREIGN_ENV:
        os.environ.pop(name, None)


def garbage(
    args: list[str], log: Path, *, env: dict[str, str] | None = None, echo: bool = False
) -> str:
    """Run ``garbage ARGS`` (this interpreter's ``-m cli``); return its standard output.

    Its standard error goes to ``log`` (and, with ``echo``, to this terminal, indented).

    Raises:
        BenchError: It exited with a code other than 0 (with its log's last lines).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        cwd=REPO,
        env=child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with log.open("w") as sink:

        def pump() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                sink.write(line)
                sink.flush()
                if echo and line.strip():
                    print(f"    {line.rstrip()}", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        assert process.stdout is not None
        output = process.stdout.read()
        process.wait()
        reader.join()
        sink.write(f"\n--- standard output ---\n{output}")
    if process.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise BenchError(
            f"`garbage {' '.join(args[:2])}` exited with {process.returncode}; "
            f"its log is {log}:\n{tail}"
        )
    return output


def load_cfg(settings: Settings, *more: str) -> Any:
    """The project's config for ``settings`` (plus ``more`` overrides), environment ignored."""
    from garbage.core.config import load_config

    return load_config(profile=settings.profile, overrides=settings.overrides(*more), environ={})


# -- data ---------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_archive(path: Path, expected_sha256: str) -> list[Image]:
    """Every JPEG of a class-folder ``.tar.gz``, one per content hash, after checking its digest.

    An image filed under two classes is left out (it has no one true label).

    Raises:
        BenchError: The archive is missing or is not the expected one.
    """
    if not path.is_file():
        raise BenchError(f"{path} is missing; see ../shared/data/README.md for the archives")
    found = sha256_of(path)
    if found != expected_sha256:
        raise BenchError(f"{path} has sha256 {found}, expected {expected_sha256}")
    by_sha: dict[str, list[Image]] = collections.defaultdict(list)
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile() or not member.name.lower().endswith((".jpg", ".jpeg")):
                continue
            handle = tar.extractfile(member)
            if handle is None:
                continue
            data = handle.read()
            label = PurePosixPath(member.name).parent.name
            sha = hashlib.sha256(data).hexdigest()
            by_sha[sha].append(Image(sha, label, member.name, data))
    return [
        min(group, key=lambda image: image.name)
        for group in by_sha.values()
        if len({image.label for image in group}) == 1
    ]


def small_archive(source: Path, destination: Path, per_class: int) -> str:
    """Write the first ``per_class`` images a class of ``source`` (by name) to ``destination``.

    The archive is the same bytes whenever it is written (sorted members, fixed times), so its
    sha256, returned, stays the one a champion trained on it recorded.
    """
    import gzip
    import io

    with tarfile.open(source) as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(".jpg")),
            key=lambda m: m.name,
        )
        taken: collections.Counter[str] = collections.Counter()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as out:
            for member in members:
                label = PurePosixPath(member.name).parent.name
                handle = tar.extractfile(member)
                if taken[label] >= per_class or handle is None:
                    continue
                taken[label] += 1
                data = handle.read()
                info = tarfile.TarInfo(member.name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                out.addfile(info, io.BytesIO(data))
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(gzip.compress(buffer.getvalue(), mtime=0))
    return sha256_of(destination)


def split_site(
    images: list[Image], share: float, seed: int, per_class: int | None
) -> tuple[list[Image], list[Image]]:
    """Per class, a seeded permutation of the images (by hash): ``share`` traffic, the rest held out.

    Args:
        images: The site's images.
        share: Share of each class sent as traffic.
        seed: Seed of the permutation.
        per_class: Use only this many images of each class (None: all).

    Returns:
        (traffic, held_out).
    """
    traffic: list[Image] = []
    held_out: list[Image] = []
    by_label: dict[str, list[Image]] = collections.defaultdict(list)
    for image in images:
        by_label[image.label].append(image)
    for label in sorted(by_label):
        ordered = sorted(by_label[label], key=lambda image: image.sha256)
        class_seed = int.from_bytes(hashlib.sha256(f"{seed}:{label}".encode()).digest()[:8], "big")
        order = np.random.default_rng(class_seed).permutation(len(ordered))
        chosen = [ordered[i] for i in order][:per_class]
        n_traffic = round(len(chosen) * share)
        traffic.extend(chosen[:n_traffic])
        held_out.extend(chosen[n_traffic:])
    return traffic, held_out


def class_counts(images: list[Image]) -> dict[str, int]:
    """Images per class, sorted by class."""
    return dict(sorted(collections.Counter(image.label for image in images).items()))


# -- the champion ---------------------------------------------------------------------------------


def ensure_champion(settings: Settings) -> Champion:
    """The champion the loops start from: the registered one, or one trained here now.

    The first run records the champion's version in ``<work>/champion.json``; later runs start
    from that version whatever the alias says (a loop's gate may have moved it).

    Raises:
        BenchError: Training failed, or no champion is registered after it.
    """
    from garbage.core.model_uri import resolve_model_dir
    from garbage.training.registry import champion_version

    cfg = load_cfg(settings)
    record = settings.work / "champion.json"
    version = None
    if record.is_file() and not settings.retrain_champion:
        version = json.loads(record.read_text())["version"]
        say(f"champion: reusing v{version} recorded in {record}")
    elif not settings.retrain_champion and (registered := champion_version(cfg)) is not None:
        version = registered
        say(f"champion: reusing v{version}, registered in {cfg.mlflow_tracking_uri}")
    reused = version is not None
    if version is None:
        say(f"champion: training one (garbage pipeline run --profile {settings.profile}); minutes")
        started = time.monotonic()
        garbage(
            ["pipeline", "run", "--profile", settings.profile, *sets(settings.overrides())],
            settings.work / "logs" / "champion-pipeline.log",
            echo=True,
        )
        version = champion_version(cfg)
        if version is None:
            raise BenchError(f"the pipeline ran but {cfg.mlflow_tracking_uri} has no champion")
        say(f"champion: v{version} trained in {time.monotonic() - started:.0f} s")
    client = registry(cfg)
    run_id = client.get_model_version(cfg.registry.model_name, version).run_id
    folder = settings.work / "champion" / f"v{version}"
    if not (folder / "model.onnx").is_file():
        source = resolve_model_dir(f"models:/{cfg.registry.model_name}/{version}", cfg)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(source, folder)
    record.write_text(json.dumps({"version": version, "run_id": run_id}, indent=2) + "\n")
    return Champion(version, run_id, folder, reused)


def sets(overrides: list[str]) -> list[str]:
    """``--set`` arguments of ``overrides``."""
    return [part for value in overrides for part in ("--set", value)]


def registry(cfg: Any) -> Any:
    """An MLflow client of the config's tracking and registry store."""
    from mlflow import MlflowClient

    return MlflowClient(cfg.mlflow_tracking_uri, cfg.mlflow_tracking_uri)


def reset_champion(settings: Settings, champion: Champion) -> None:
    """Put the champion alias back on the original champion (a loop's gate may have moved it)."""
    from garbage.training.registry import champion_version, set_champion

    cfg = load_cfg(settings)
    if champion_version(cfg) != champion.version:
        set_champion(cfg, champion.version)


def trashnet_test_slice(settings: Settings, champion: Champion) -> TestSlice:
    """The test images of the champion's split manifest (its run's ``data/manifest``).

    Checks that no image of its train or validation split has the same content.

    Raises:
        BenchError: The manifest cannot be read, or an image it names is not in the archive.
    """
    import pandas as pd

    cfg = load_cfg(settings)
    destination = settings.work / "champion" / f"v{champion.version}-data"
    try:
        local = registry(cfg).download_artifacts(champion.run_id, "data/manifest", str(destination))
    except Exception as e:  # MLflow raises many types for a missing artifact
        raise BenchError(
            f"cannot read the split manifest of the champion's run {champion.run_id}: {e}"
        ) from e
    manifest = pd.read_csv(local)
    test = manifest[manifest["split"] == "test"]
    trained = set(manifest.loc[manifest["split"] != "test", "sha256"])
    archive = {
        image.sha256: image for image in read_archive(settings.trashnet, settings.trashnet_sha256)
    }
    missing = sorted(set(test["sha256"]) - set(archive))
    if missing:
        raise BenchError(
            f"{len(missing)} test images of the champion's manifest are not in {settings.trashnet} "
            f"(e.g. {missing[0]}): was the champion trained on another archive?"
        )
    images = [archive[sha] for sha in sorted(set(test["sha256"]))]
    wrong = sum(archive[row.sha256].label != row.label for row in test.itertuples())
    checks = {
        "images": len(images),
        "in_champion_train_or_val": len(set(test["sha256"]) & trained),
        "label_differs_from_archive": int(wrong),
    }
    description = (
        f"the test split of the champion's run (MLflow run {champion.run_id}, artifact "
        f"data/manifest): {len(images)} images of {settings.trashnet.name}; "
        f"{checks['in_champion_train_or_val']} of them in its train or validation split"
    )
    return TestSlice(images, description, checks)


# -- scoring --------------------------------------------------------------------------------------


def score(model_dir: Path, images: list[Image]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class recall of the exported model at ``model_dir``."""
    from garbage.core.classifier import OnnxClassifier
    from garbage.training.metrics import classification_metrics

    model = OnnxClassifier.load(model_dir)
    predictions = model.predict_bytes((image.data for image in images), batch_size=32)
    index = {name: i for i, name in enumerate(model.classes)}
    metrics = classification_metrics(
        [index[image.label] for image in images],
        [index[p.label] for p in predictions],
        model.classes,
    )
    return {
        "images": len(images),
        "accuracy": round(metrics["accuracy"], 4),
        "macro_f1": round(metrics["macro_f1"], 4),
        "recall": {c: round(m["recall"], 4) for c, m in metrics["per_class"].items()},
    }


def score_both(model_dir: Path, held_out: list[Image], test: TestSlice) -> dict[str, Any]:
    """The model's scores on the held-out site images and on the TrashNet test slice."""
    return {"site": score(model_dir, held_out), "trashnet_test": score(model_dir, test.images)}


# -- traffic --------------------------------------------------------------------------------------


def complete_rows(db: Path) -> int:
    """Rows of the collector's store with a prediction and a stored image hash."""
    from monitoring.store import InferenceStore

    store = InferenceStore(str(db), create=False)
    try:
        rows = store.load_window(columns=["inference_id", "prediction", "image_sha256"])
    finally:
        store.close()
    return len(rows.dropna(subset=["prediction", "image_sha256"]))


def post_image(client: Any, server: ServerProcess, image: Image, request_id: str) -> int:
    """One v1 predict request for ``image``; retried while the server answers 503 (not ready)."""
    body = v1_body([image.data])
    headers = {"Content-Type": "application/json", "x-request-id": request_id}
    for _ in range(120):
        answer = client.post(server.url + PREDICT, content=body, headers=headers)
        if answer.status_code != 503:
            return answer.status_code
        time.sleep(0.5)
    return 503


def send_traffic(settings: Settings, champion: Champion, traffic: list[Image]) -> dict[str, Any]:
    """The traffic state: every traffic image through the server into the collector's store.

    Raises:
        BenchError: A request was not answered 200, or the store did not get every row.
    """
    import httpx

    folder = settings.work / "traffic"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "server").mkdir(parents=True)
    collector = CollectorProcess(folder / "monitoring", champion.model_dir)
    collector.work.mkdir(parents=True)
    server = ServerProcess(folder / "server", champion.model_dir, f"{collector.url}/events")
    started = time.monotonic()
    try:
        collector.start()
        server.start()
        say(
            f"traffic: collector {collector.url}, server {server.url} (champion v{champion.version})"
        )
        statuses: collections.Counter[int] = collections.Counter()
        with (
            httpx.Client(timeout=60) as client,
            ThreadPoolExecutor(settings.concurrency) as pool,
        ):
            jobs = [
                pool.submit(post_image, client, server, image, f"site-{i}")
                for i, image in enumerate(traffic)
            ]
            for done, job in enumerate(jobs, 1):
                statuses[job.result()] += 1
                if done % 200 == 0 or done == len(jobs):
                    say(f"traffic: {done}/{len(jobs)} answered {dict(statuses)}")
        sent_s = time.monotonic() - started
        if statuses[200] != len(traffic):
            raise BenchError(
                f"the server answered {dict(statuses)} to {len(traffic)} requests; "
                f"see {server.work / 'server.log'}"
            )
        deadline = time.monotonic() + 180
        while (rows := complete_rows(collector.db)) < len(traffic):
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the collector stored {rows} of {len(traffic)} inferences within 180 s; "
                    f"see {collector.work / 'collector.log'} and {server.work / 'server.log'}"
                )
            time.sleep(0.5)
        say(f"traffic: the collector stored all {rows} inferences with their images")
    finally:
        server.stop()
        collector.stop()
    return {
        "requests": len(traffic),
        "answered_200": statuses[200],
        "rows_stored": rows,
        "send_seconds": round(sent_s, 1),
        "wall_seconds": round(time.monotonic() - started, 1),
        "store": str(collector.db),
    }


# -- one loop -------------------------------------------------------------------------------------


def annotate(tasks: list[dict], truth: dict[str, str]) -> tuple[list[dict], dict[str, int]]:
    """A scripted annotator: each task answered with the archive's label of its image.

    It fetches the task's image URL (the collector's ``/images``, with the labeller's token) and
    looks the bytes' sha256 up in the site archive.

    Returns:
        The Label Studio JSON export, and the labels given per class.

    Raises:
        BenchError: An image cannot be fetched, or its bytes are not an archive image.
    """
    import httpx

    from monitoring.labelstudio import FROM_NAME, IMAGE_KEY, RESULT_TYPE, TO_NAME

    exported = []
    given: collections.Counter[str] = collections.Counter()
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        for number, task in enumerate(tasks, 1):
            answer = client.get(task["data"][IMAGE_KEY])
            if answer.status_code != 200:
                raise BenchError(f"GET {task['data'][IMAGE_KEY]} answered {answer.status_code}")
            sha = hashlib.sha256(answer.content).hexdigest()
            if sha not in truth:
                raise BenchError(f"task {number}: its image (sha256 {sha}) is no traffic image")
            result = [
                {
                    "id": f"bench-{number}",
                    "from_name": FROM_NAME,
                    "to_name": TO_NAME,
                    "type": RESULT_TYPE,
                    "value": {"choices": [truth[sha]]},
                }
            ]
            annotation = {"id": number, "result": result, "was_cancelled": False}
            exported.append({**copy.deepcopy(task), "id": number, "annotations": [annotation]})
            given[truth[sha]] += 1
    return exported, dict(sorted(given.items()))


def export_model(cfg: Any, version: str, destination: Path) -> Path:
    """Copy registered ``version``'s model folder to ``destination``; return it."""
    from garbage.core.model_uri import resolve_model_dir

    source = resolve_model_dir(f"models:/{cfg.registry.model_name}/{version}", cfg)
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(source, destination)
    return destination


def check_predict(model_dir: Path, image: Image, folder: Path) -> dict[str, Any]:
    """``garbage predict --model <model_dir>`` on one held-out image: the folder loads."""
    path = folder / f"predict-check{PurePosixPath(image.name).suffix}"
    path.write_bytes(image.data)
    output = garbage(["predict", "--model", str(model_dir), str(path)], folder / "predict.log")
    return json.loads(output.strip().splitlines()[-1])


def version_checks(cfg: Any, name: str, test: TestSlice, held_out: list[Image]) -> dict[str, Any]:
    """What the dataset version the adapted model trained on holds of the evaluation images."""
    from garbage.training.data.versions import open_store, version_manifest

    manifest = version_manifest(open_store(cfg), name)
    trained = set(manifest.loc[manifest["split"] != "test", "sha256"])
    test_sha = {image.sha256 for image in test.images}
    trashnet = manifest[manifest["source"] == "trashnet"]
    return {
        "trashnet_test_in_train_or_val": len(test_sha & trained),
        "trashnet_test_same_as_version_test": bool(
            test_sha <= set(trashnet.loc[trashnet["split"] == "test", "sha256"])
        ),
        "held_out_site_in_version": len({i.sha256 for i in held_out} & set(manifest["sha256"])),
        "site_labels": {
            split: int(n)
            for split, n in manifest[manifest["source"] != "trashnet"]["split"]
            .value_counts()
            .items()
        },
    }


def live_accuracy(collector_url: str) -> dict[str, Any]:
    """The champion's live accuracy from the collector's labels: over all, and the random picks."""
    import httpx

    answer = httpx.get(f"{collector_url}/accuracy", params={"window": "3650d"}, timeout=30)
    if answer.status_code != 200:
        raise BenchError(f"GET /accuracy answered {answer.status_code}: {answer.text[:200]}")
    stats = answer.json()
    return {
        "labelled": stats["labelled"],
        "accuracy": stats["accuracy"],
        "random_labelled": stats["random"]["labelled"],
        "random_accuracy": stats["random"]["accuracy"],
    }


def run_loop(
    settings: Settings,
    k: int,
    champion: Champion,
    truth: dict[str, str],
    held_out: list[Image],
    test: TestSlice,
) -> dict[str, Any]:
    """One adaptation loop for ``k`` labels per predicted class, in ``<work>/k<k>``.

    Raises:
        BenchError: A step failed (its log is named).
    """
    folder = settings.work / f"k{k}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copytree(settings.work / "traffic" / "monitoring", folder / "monitoring")
    datasets = folder / "datasets"
    cfg = load_cfg(settings, f"data.datasets_root={datasets}")
    reset_champion(settings, champion)
    collector = CollectorProcess(folder / "monitoring", champion.model_dir)
    seconds: dict[str, float] = {}
    started = time.monotonic()
    try:
        collector.start()
        mark = time.monotonic()
        tasks_file = folder / "tasks.json"
        summary = json.loads(
            garbage(
                [
                    *("review", "--db", str(collector.db), "--per-class", str(k)),
                    *("--format", "labelstudio", "--since", "3650d"),
                    *("--collector", collector.url, "--out", str(tasks_file)),
                ],
                folder / "review.log",
            )
        )
        tasks = json.loads(tasks_file.read_text())
        seconds["review"] = time.monotonic() - mark
        say(f"k={k}: review picked {len(tasks)} images ({summary.get('per_class', '')})")
        mark = time.monotonic()
        export, given = annotate(tasks, truth)
        export_file = folder / "export.json"
        export_file.write_text(json.dumps(export, indent=2))
        imported = json.loads(
            garbage(
                ["labels", "import", str(export_file), "--collector", collector.url],
                folder / "labels-import.log",
                env={"GARBAGE_COLLECTOR_TOKEN": TOKEN},
            )
        )
        seconds["label"] = time.monotonic() - mark
        say(f"k={k}: {imported.get('imported')} labels imported, per class {given}")
        live = live_accuracy(collector.url)
    finally:
        collector.stop()
    mark = time.monotonic()
    say(f"k={k}: garbage retrain (dataset version, pipeline warm-started from v{champion.version})")
    report = json.loads(
        garbage(
            [
                *("retrain", "--db", str(collector.db), "--json", "--profile", settings.profile),
                *sets(
                    settings.overrides(f"data.datasets_root={datasets}", "retrain.min_new_labels=1")
                ),
            ],
            folder / "retrain.log",
            echo=True,
        )
    )
    (folder / "retrain.json").write_text(json.dumps(report, indent=2))
    gate = report.get("gate") or {}
    version = gate.get("version")
    if report.get("outcome") != "retrained" or version is None:
        raise BenchError(
            f"k={k}: garbage retrain ended {report.get('outcome')!r} without a registered "
            f"version; see {folder / 'retrain.log'}"
        )
    model_dir = export_model(cfg, str(version), folder / "model")
    seconds["retrain"] = time.monotonic() - mark
    wall = time.monotonic() - started
    say(
        f"k={k}: v{version} {'promoted' if gate.get('promote') else 'not promoted'} "
        f"({gate.get('reason')}); loop {wall / 60:.1f} min"
    )
    scores = score_both(model_dir, held_out, test)
    return {
        "k": k,
        "tasks": len(tasks),
        "labels_imported": imported.get("imported"),
        "labels_per_class": given,
        "review": {
            key: summary.get(key)
            for key in ("budget", "candidates", "picked", "uncertain", "random", "per_class")
        },
        "review_excluded": summary.get("excluded"),
        "live_accuracy": live,
        "dataset_version": (report.get("version") or {}).get("name"),
        "version_checks": version_checks(cfg, report["version"]["name"], test, held_out),
        "registered_version": str(version),
        "gate": {
            "promote": bool(gate.get("promote")),
            "reason": gate.get("reason"),
            "metric": gate.get("metric"),
            "candidate": gate.get("candidate"),
            "champion": gate.get("champion"),
            "slices": gate.get("slices"),
        },
        "after": scores,
        "model_dir": str(
            model_dir.relative_to(REPO) if model_dir.is_relative_to(REPO) else model_dir
        ),
        "predict_check": check_predict(model_dir, held_out[0], folder),
        "seconds": {key: round(value, 1) for key, value in seconds.items()},
        "wall_seconds": round(wall, 1),
    }


# -- results --------------------------------------------------------------------------------------


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target, what was measured for it, and whether it was met (None: not measured)."""
    before = report["champion"]["before"]["trashnet_test"]["accuracy"]
    rows = {row["k"]: row for row in report["loops"] if "after" in row}
    found = []
    for k, wanted in SITE_ACCURACY_TARGETS.items():
        got = rows[k]["after"]["site"]["accuracy"] if k in rows else None
        found.append(
            {
                "target": f"site accuracy >= {wanted:.0%} with k = {k}",
                "measured": got,
                "met": None if got is None else got >= wanted,
            }
        )
    for k, row in sorted(rows.items()):
        after = row["after"]["trashnet_test"]["accuracy"]
        found.append(
            {
                "target": f"TrashNet test accuracy at most {TRASHNET_MAX_DROP * 100:.0f} point "
                f"below the champion's ({before:.4f}), k = {k}",
                "measured": after,
                "met": after >= before - TRASHNET_MAX_DROP - 1e-9,
            }
        )
    walls = [row["wall_seconds"] for row in rows.values()]
    found.append(
        {
            "target": f"one loop in at most {LOOP_MAX_SECONDS // 60} min",
            "measured": max(walls) if walls else None,
            "met": (max(walls) <= LOOP_MAX_SECONDS) if walls else None,
        }
    )
    return found


def pct(value: float | None) -> str:
    """A share as a percentage with one decimal, or a dash."""
    return "-" if value is None else f"{100 * value:.1f} %"


def markdown(report: dict[str, Any]) -> str:
    """The Markdown report: the table per k, the targets, the checks."""
    machine = report["machine"]
    champion = report["champion"]
    before = champion["before"]
    lines = [
        f"# Site-adaptation benchmark ({report['profile']} profile), {report['date']}",
        "",
        f"Machine: {machine['cpu']}, {machine['cpus_available']} CPUs, {machine['memory_gib']} "
        f"GiB, GPU: {machine['gpu'] or 'none'}; load average at start "
        f"{machine['load_average_at_start'][0]:.1f}. Command: `{report['command']}`.",
        "",
        f"Champion: v{champion['version']} ({'reused' if champion['reused'] else 'trained by this run'}). "
        f"Site: {report['site']['archive']}, {report['site']['traffic']} images sent as traffic, "
        f"{report['site']['held_out']} held out (never sent). TrashNet test slice: "
        f"{report['trashnet_test']['description']}.",
        "",
        "![Site and TrashNet test accuracy against the labels of each loop](adapt.png)",
        "",
        "| k per class | labels | site accuracy | site macro-F1 | TrashNet test accuracy | gate | loop wall time | model_dir |",
        "| ---: | ---: | --- | --- | --- | --- | ---: | --- |",
    ]
    for row in report["loops"]:
        if "after" not in row:
            lines.append(f"| {row['k']} | - | - | - | - | failed: {row['error'][:120]} | - | - |")
            continue
        after = row["after"]
        gate = "promoted" if row["gate"]["promote"] else "not promoted"
        lines.append(
            f"| {row['k']} | {row['labels_imported']} "
            f"| {pct(before['site']['accuracy'])} -> {pct(after['site']['accuracy'])} "
            f"| {before['site']['macro_f1']:.3f} -> {after['site']['macro_f1']:.3f} "
            f"| {pct(before['trashnet_test']['accuracy'])} -> {pct(after['trashnet_test']['accuracy'])} "
            f"| v{row['registered_version']} {gate} | {row['wall_seconds'] / 60:.1f} min "
            f"| `{row['model_dir']}` |"
        )
    traffic = report["site"]["traffic"]
    for row in report["loops"]:
        if "after" in row and (row["labels_imported"] or 0) >= 0.9 * traffic:
            lines += [
                "",
                f"k = {row['k']} labels {row['labels_imported']} of the {traffic} traffic images "
                "(every one the review would pick): what labels alone reach with this recipe, "
                "the ceiling of the loop on this traffic.",
            ]
    settings = ", ".join(
        f"{key}={value}" for key, value in report["config"]["retrain_train"].items()
    )
    model = ", ".join(f"{key}={value}" for key, value in report["config"]["retrain_model"].items())
    lines += [
        "",
        f"Retrain settings (retrain.train): {settings}; (retrain.model): {model or 'none'}; "
        f"gate: {report['config']['gate_metric']}, "
        f"overall {report['config']['overall']}, slice tolerance "
        f"{report['config']['slice_tolerance']}.",
    ]
    lines += ["", "| target | measured | met |", "| --- | ---: | --- |"]
    for target in report["targets"]:
        measured = target["measured"]
        shown = (
            "-"
            if measured is None
            else f"{measured / 60:.1f} min"
            if "min" in target["target"]
            else pct(measured)
        )
        met = {True: "yes", False: "NO", None: "not measured"}[target["met"]]
        lines.append(f"| {target['target']} | {shown} | {met} |")
    lines += [
        "",
        "Checks: TrashNet test images in the champion's train or validation split: "
        f"{report['trashnet_test']['checks']['in_champion_train_or_val']}.",
    ]
    for row in report["loops"]:
        if "after" in row:
            checks = row["version_checks"]
            lines.append(
                f"k = {row['k']}: dataset version {row['dataset_version']}: TrashNet test images "
                f"in its train or validation split {checks['trashnet_test_in_train_or_val']}, "
                f"held-out site images in it {checks['held_out_site_in_version']}, site labels "
                f"per split {checks['site_labels']}; `garbage predict --model {row['model_dir']}` "
                f"answered {row['predict_check']['label']!r}."
            )
    lines += [
        "",
        "The champion's live accuracy as the collector reports it from the loop's labels "
        "(`GET /accuracy`), against its accuracy on the held-out site photos "
        f"({pct(before['site']['accuracy'])}): over every label, mostly the images it was "
        "least sure of, and over the review's random picks alone, the unbiased estimate.",
        "",
        "| k per class | every label | random picks |",
        "| ---: | --- | --- |",
    ]
    for row in report["loops"]:
        live = row.get("live_accuracy")
        if live:
            lines.append(
                f"| {row['k']} | {pct(live['accuracy'])} ({live['labelled']}) "
                f"| {pct(live['random_accuracy'])} ({live['random_labelled']}) |"
            )
    lines += ["", "Gate reasons:", ""]
    for row in report["loops"]:
        if "after" in row:
            lines.append(f"- k = {row['k']}: {row['gate']['reason']}")
    lines += [
        "",
        f"Traffic: {report['traffic']['requests']} requests in {report['traffic']['send_seconds']} s "
        f"({report['traffic']['rows_stored']} rows stored). Wall time per loop = review + "
        "labelling + labels import + retrain (dataset version, pipeline, gate) + model export.",
        "",
    ]
    return "\n".join(lines)


def plot_learning_curve(report: dict[str, Any], path: Path) -> Path:
    """Site and TrashNet test accuracy against the labels each loop got, with the targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = report["champion"]["before"]
    rows = sorted(
        (row for row in report["loops"] if "after" in row), key=lambda r: r["labels_imported"]
    )
    labels = [row["labels_imported"] for row in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for key, name, colour in (
        ("site", "site (held out)", "C0"),
        ("trashnet_test", "TrashNet test", "C1"),
    ):
        ax.plot(
            labels,
            [row["after"][key]["accuracy"] for row in rows],
            "o-",
            color=colour,
            label=f"{name}, after the loop",
        )
        ax.axhline(before[key]["accuracy"], color=colour, linestyle=":", label=f"{name}, champion")
    for row in rows:
        ax.annotate(
            f"k={row['k']}",
            (row["labels_imported"], row["after"]["site"]["accuracy"]),
            textcoords="offset points",
            xytext=(4, -12),
            fontsize=8,
        )
    by_k = {row["k"]: row for row in rows}
    targets = [
        (by_k[k]["labels_imported"], wanted)
        for k, wanted in SITE_ACCURACY_TARGETS.items()
        if k in by_k
    ]
    if targets:
        ax.plot(*zip(*targets, strict=True), "r*", markersize=11, label="site target")
    ax.set_xscale("log")
    ax.set_xlabel("site labels (log scale)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(
        f"Site adaptation, {report['date'][:10]}, {report['machine']['cpus_available']} CPUs",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_results(report: dict[str, Any], out: Path) -> None:
    """``adapt.json``, ``adapt.md`` and the learning curve ``adapt.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapt.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "adapt.md").write_text(markdown(report))
    if any("after" in row for row in report["loops"]):
        plot_learning_curve(report, out / "adapt.png")


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> Settings:
    """The command line as :class:`Settings`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="Work dir (default: work/bench-adapt).")
    parser.add_argument("--k", type=int, nargs="+", help="Labels per class, one loop each.")
    parser.add_argument("--profile", help="Config profile (default: default; --quick: smoke).")
    parser.add_argument("--traffic-share", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the site split.")
    parser.add_argument(
        "--site-per-class", type=int, help="Use only this many site images a class."
    )
    parser.add_argument("--concurrency", type=int, default=4, help="Requests in flight at once.")
    parser.add_argument("--retrain-champion", action="store_true", help="Train a new champion.")
    parser.add_argument("--out", type=Path, help="Results folder (default: bench/results).")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"Check the script: smoke profile, {QUICK_SITE_PER_CLASS} site and "
        f"{QUICK_TRASHNET_PER_CLASS} TrashNet images a class, k = {QUICK_KS[0]}, work dir "
        "work/bench-adapt-quick, results into it.",
    )
    args = parser.parse_args(argv)
    if not 0 < args.traffic_share < 1:
        parser.error("--traffic-share must lie between 0 and 1")
    work = args.work or REPO / "work" / ("bench-adapt-quick" if args.quick else "bench-adapt")
    work = work.resolve()
    trashnet, trashnet_sha256 = TRASHNET, TRASHNET_SHA256
    if args.quick:
        trashnet = work / f"trashnet-{QUICK_TRASHNET_PER_CLASS}-a-class.tar.gz"
        trashnet_sha256 = small_archive(TRASHNET, trashnet, QUICK_TRASHNET_PER_CLASS)
    return Settings(
        work=work,
        profile=args.profile or ("smoke" if args.quick else "default"),
        ks=tuple(args.k or (QUICK_KS if args.quick else DEFAULT_KS)),
        traffic_share=args.traffic_share,
        seed=args.seed,
        site_per_class=args.site_per_class or (QUICK_SITE_PER_CLASS if args.quick else None),
        trashnet=trashnet,
        trashnet_sha256=trashnet_sha256,
        concurrency=args.concurrency,
        retrain_champion=args.retrain_champion,
        quick=args.quick,
        out=(args.out or (work if args.quick else RESULTS)).resolve(),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write its results. Exit 1 when a loop failed or a target was missed."""
    settings = parse_args(argv)
    drop_foreign_env()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    started = time.monotonic()
    settings.work.mkdir(parents=True, exist_ok=True)
    machine = describe_machine(("torch", "timm", "onnxruntime", "mlflow", "kfp"))
    say(f"work dir {settings.work}; profile {settings.profile}; k = {list(settings.ks)}")
    site = read_archive(SITE, SITE_SHA256)
    traffic, held_out = split_site(
        site, settings.traffic_share, settings.seed, settings.site_per_class
    )
    say(f"site: {len(traffic)} traffic images, {len(held_out)} held out {class_counts(held_out)}")
    champion = ensure_champion(settings)
    try:
        test = trashnet_test_slice(settings, champion)
        say(f"TrashNet test slice: {test.description}")
        say("scoring the champion on the held-out site images and the TrashNet test slice")
        before = score_both(champion.model_dir, held_out, test)
        say(
            f"champion: site accuracy {pct(before['site']['accuracy'])}, macro-F1 "
            f"{before['site']['macro_f1']:.3f}; TrashNet test {pct(before['trashnet_test']['accuracy'])}"
        )
        traffic_state = send_traffic(settings, champion, traffic)
        truth = {image.sha256: image.label for image in traffic}
        loops = []
        for k in settings.ks:
            say(f"k={k}: loop starts")
            try:
                loops.append(run_loop(settings, k, champion, truth, held_out, test))
            except BenchError as e:
                say(f"k={k}: FAILED: {e}")
                loops.append({"k": k, "error": str(e)})
    finally:
        reset_champion(settings, champion)
    say(f"champion alias back on v{champion.version}")
    cfg = load_cfg(settings)
    report: dict[str, Any] = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python bench/bench_adapt.py", *(argv or sys.argv[1:])]),
        "profile": settings.profile,
        "quick": settings.quick,
        "machine": machine,
        "settings": {**asdict(settings), "work": str(settings.work), "out": str(settings.out)},
        "config": {
            "retrain_train": cfg.retrain.train,
            "retrain_model": cfg.retrain.model,
            "gate_metric": cfg.registry.gate_metric,
            "overall": cfg.registry.overall,
            "slice_tolerance": cfg.registry.slice_tolerance,
            "min_slice_images": cfg.registry.min_slice_images,
            "tracking_uri": cfg.mlflow_tracking_uri,
            "data_source": str(settings.trashnet),
            "data_sha256": settings.trashnet_sha256,
        },
        "site": {
            "archive": SITE.name,
            "sha256": SITE_SHA256,
            "traffic": len(traffic),
            "held_out": len(held_out),
            "held_out_per_class": class_counts(held_out),
            "traffic_per_class": class_counts(traffic),
        },
        "trashnet_test": {"description": test.description, "checks": test.checks},
        "champion": {
            "version": champion.version,
            "run_id": champion.run_id,
            "reused": champion.reused,
            "model_dir": str(champion.model_dir),
            "before": before,
        },
        "traffic": traffic_state,
        "loops": loops,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    report["targets"] = targets(report)
    write_results(report, settings.out)
    print(markdown(report))
    say(f"wrote {settings.out / 'adapt.json'} and {settings.out / 'adapt.md'}")
    failed = any("error" in row for row in loops)
    missed = any(target["met"] is False for target in report["targets"])
    return 1 if failed or (missed and not settings.quick) else 0


if __name__ == "__main__":
    sys.exit(main())
