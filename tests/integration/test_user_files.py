"""Issue 23: no user file is lost and no name is blocked, through the real CLI.

Each case lists the folder before and after, and asserts the exit code and one line naming the
problem and its fix. A study that `--overwrite` would replace survives any failure before the new
one starts; a folder that does not hold a lushpo study is never deleted; a failed start leaves
nothing that blocks the name."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

from tests.support.clips import write_clip
from tests.support.featuresets import put_synthetic
from tests.support.read_only import read_only
from tests.support.s3 import free_port

pytestmark = [pytest.mark.slow]

LUSHPO = str(Path(sys.executable).with_name("lushpo"))
STUDY = """\
name: tiny
feature_set: {backbone: synthetic, frames: 4}
split: {kind: stratified, k: 3, seed: 0}
space: {lstm_units: [8], dense_layers: 1, dense_units_1: [8], batch_size: [16]}
budget: {trials: 1, max_concurrent: 1, max_epochs: 2, patience: 2}
resources: {cpu: 1, intra_op_threads: 1}
"""


def _listing(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@dataclass(frozen=True)
class Made:
    """What the module made once through the CLI: a finished tiny study and its export."""

    store: str
    run: Path
    export: Path


def _a_study(runs: Path, made: Made) -> list[Callable[[], None]]:
    """A study's run folder as `lushpo tune` leaves it: its settings and its Optuna file."""
    run = runs / "tiny"
    run.mkdir(parents=True)
    (run / "lushpo-settings.json").write_text(json.dumps({"split": "mine"}))
    study = optuna.create_study(study_name="tiny", storage=f"sqlite:///{run / 'optuna.db'}")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.9))
    (run / "notes.md").write_text("413 MB of results")
    return []


def _thesis(runs: Path, made: Made) -> list[Callable[[], None]]:
    (runs / "tiny").mkdir(parents=True)
    (runs / "tiny" / "thesis.tex").write_text("\\chapter{}")
    return []


def _users_folder(runs: Path, made: Made) -> list[Callable[[], None]]:
    """Why 1: a folder of the user's, no export of lushpo's in it."""
    (runs / "features" / "mine").mkdir(parents=True)
    (runs / "report.md").write_text("n")
    (runs / "holiday.png").write_text("p")
    (runs / "features" / "mine" / "important.csv").write_text("d")
    return []


def _an_export(runs: Path, made: Made) -> list[Callable[[], None]]:
    """Why 1: an earlier export beside a file of the user's."""
    shutil.copytree(made.export, runs / "export")
    (runs / "export" / "notes.txt").write_text("mine")
    return []


def _a_running_study(runs: Path, made: Made) -> list[Callable[[], None]]:
    """Why 3: the finished study, its run folder locked by another live driver."""
    shutil.copytree(made.run, runs / "tiny")
    code = (
        "import sys, time; from hpo.search import locked\n"
        "with locked(sys.argv[1], 'tune', log=lambda line: None):\n"
        "    print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(runs / "tiny")],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline() == "held\n"
    return [holder.kill, holder.wait]


def _a_finished_study(runs: Path, made: Made) -> list[Callable[[], None]]:
    """Why 7: the finished study, resumed with another setting."""
    shutil.copytree(made.run, runs / "tiny")
    return []


def _read_only(runs: Path, made: Made) -> list[Callable[[], None]]:
    """Why 7: a storage path nobody can write to."""
    runs.mkdir()
    (runs / "keep.txt").write_text("mine")
    stack = contextlib.ExitStack()
    stack.enter_context(read_only(runs))
    return [stack.close]


def _a_corrupt_set(runs: Path, made: Made) -> list[Callable[[], None]]:
    """Why 5: a feature set whose features.npy was truncated."""
    put_synthetic(runs / "store", clips=6, frames=4, dim=8)
    (features,) = (runs / "store").rglob("features.npy")
    features.write_bytes(features.read_bytes()[:-64])
    return []


NOWHERE = f"127.0.0.1:{free_port()}"
TUNE = ["tune", "--config", "study.yaml", "--store", "{store}", "--storage-path", "{runs}"]
S3_RUNS = "s3://lushpo-none/runs"
FEATURES = ["features", "--backbone", "xception", "--frames", "2", "--store", "{runs}/store",
            "--data-dir", "{runs}/data"]  # fmt: skip
NO_S3 = {
    "AWS_ENDPOINT_URL": f"http://{NOWHERE}",
    "AWS_ACCESS_KEY_ID": "x",
    "AWS_SECRET_ACCESS_KEY": "y",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _a_read_only_export(runs: Path, made: Made) -> list[Callable[[], None]]:
    """Why 7: an export nobody can write to (evaluate failed only after its work)."""
    shutil.copytree(made.export, runs / "export")
    stack = contextlib.ExitStack()
    stack.enter_context(read_only(runs / "export"))
    return [stack.close]


def _clips(runs: Path, made: Made) -> list[Callable[[], None]]:
    """Three clips of the user's, one per class."""
    for k, name in enumerate(("Cov-own.mp4", "Pneu-own.mp4", "Reg-own.mp4")):
        write_clip(runs / "data" / "pocus" / "convex" / name, 6, first_index=6 * k)
    return []


def _clips_and_a_read_only_store(runs: Path, made: Made) -> list[Callable[[], None]]:
    """Why 7: a store nobody can write to (found only after the whole extraction had run)."""
    _clips(runs, made)
    (runs / "store").mkdir()
    stack = contextlib.ExitStack()
    stack.enter_context(read_only(runs / "store"))
    return [stack.close]


def _an_export_with_another_model(runs: Path, made: Made) -> list[Callable[[], None]]:
    """Why 7: an export whose model.h5 was replaced by another model (a swapped file predicted
    silently), and a clip to predict."""
    shutil.copytree(made.export, runs / "export")
    shutil.copyfile(next((runs / "export").glob("fold-*.h5")), runs / "export" / "model.h5")
    write_clip(runs / "clip.mp4", 6)
    return []


def _nothing(runs: Path, made: Made) -> list[Callable[[], None]]:
    runs.mkdir()
    return []


# case: (make the runs folder, argv, environment, YAML appended, exit code, the line says)
CASES = {
    # Why 1: export --overwrite deleted files it never wrote, and deleted before it validated.
    "export --overwrite into a folder of the user's": (
        _users_folder, ["export", "{run}", "--out", "{runs}", "--overwrite"], {}, "", 2,
        "holds files lushpo did not write (features/mine/important.csv, holiday.png, "
        "report.md); --overwrite replaces only an export's own files"),
    "export --overwrite that fails: the store lacks the set": (
        _an_export, ["export", "{run}", "--out", "{runs}/export", "--overwrite",
                     "--store", "{runs}/empty-store"], {}, "", 1,
        "make it with `lushpo features"),
    # Why 3: nothing locked a run folder.
    "tune --resume while another driver runs the study": (
        _a_running_study, [*TUNE, "--resume"], {}, "", 1, "is being written by `lushpo tune`"),
    # Why 7: exit codes the README promised otherwise, and messages with no fix.
    "data check, LUSHPO_DATA_DIR unset": (
        _nothing, ["data", "check"], {}, "", 2, "LUSHPO_DATA_DIR"),
    "data check of a missing data dir": (
        _nothing, ["data", "check", "--data-dir", "{runs}/nowhere"], {}, "", 2, "nowhere"),
    "tune --resume with another validation fraction": (
        _a_finished_study, [*TUNE, "--resume"], {}, "training: {validation_fraction: 0.3}\n", 2,
        "--resume refused: training.validation_fraction was 0.2, now 0.3"),
    "tune on a read-only storage path": (
        _read_only, TUNE, {}, "", 1, "permission denied: {runs}"),
    "a postgresql:// Optuna URL nobody answers": (
        _nothing, [*TUNE, "--optuna-storage", f"postgresql://lushpo:s3cret@{NOWHERE}/lushpo"],
        {}, "", 1, f"lushpo:***@{NOWHERE}"),
    # Why 5: a corrupt feature set was trusted.
    "features verify of a truncated set": (
        _a_corrupt_set, ["features", "verify", "--store", "{runs}/store"], {}, "", 1,
        "'features.npy' is corrupt"),
    # Why 2: it deleted first and validated afterwards.
    "tune --overwrite, the cluster address unreachable": (
        _a_study, [*TUNE, "--overwrite", "--address", NOWHERE], {}, "", 1,
        "no Ray cluster answers"),
    # Why 2: any non-empty folder was wiped.
    "tune --overwrite on a folder that is not a study": (
        _thesis, [*TUNE, "--overwrite"], {}, "", 1,
        "holds thesis.tex, not a lushpo study; --overwrite deletes"),
    # Why 4: a failed start left runs/<name>/optuna.db, and the next tune said "already exists".
    "a fresh tune, the cluster address unreachable": (
        _nothing, [*TUNE, "--address", NOWHERE], {}, "", 1, "start one with `ray start --head`"),
    # Why 7: messages with no fix.
    "a missing feature set": (
        _nothing, [*TUNE[:3], "--store", "{runs}/empty-store", *TUNE[5:]], {}, "", 1,
        "make it with `lushpo features --backbone synthetic --frames 4 --sampling even"),
    "an unreachable S3 storage path": (
        _nothing, [*TUNE[:5], "--storage-path", S3_RUNS,
                   "--optuna-storage", "sqlite:///{runs}/optuna.db"], NO_S3, "", 1,
        f"the lock of {S3_RUNS}/tiny cannot be written at http://{NOWHERE}"),
    "LUSHPO_STORE with an unsupported scheme": (
        _nothing, [*TUNE[:3], *TUNE[5:]], {"LUSHPO_STORE": "gs://bucket/x"}, "", 2,
        "The environment variable LUSHPO_STORE (the default of 'store') must be"),
    # Why 7: exit codes and silently accepted configs.
    "two budget sections": (
        _nothing, TUNE, {}, "budget: {trials: 3}\n", 2,
        "key 'budget' given twice in one mapping (again at line"),
    "a backbone lushpo cannot extract": (
        _nothing, ["config", "check", "--config", "study.yaml"], {},
        "", 2, "'feature_set.backbone' key in study.yaml must be one of ["),
    "evaluate on a read-only export": (
        _a_read_only_export, ["evaluate", "{runs}/export", "--no-paper"], {}, "", 1,
        "permission denied: {runs}/export; choose a folder you can write to"),
    "features into a read-only store": (
        _clips_and_a_read_only_store, [*FEATURES, "--weights", "none"], {}, "", 1,
        "store file://{runs}/store cannot be written (Operation not permitted); pass --store"),
    "ImageNet weights with no network": (
        _clips, [*FEATURES, "--weights", "imagenet"],
        {"KERAS_HOME": "{runs}/keras", "LUSHPO_CACHE_DIR": "{runs}/cache"}, "", 1,
        "offline, give a copy of xception_weights_tf_dim_ordering_tf_kernels_notop.h5 with "
        "--weights PATH or LUSHPO_WEIGHTS"),
    "predict with a model.h5 replaced since the export": (
        _an_export_with_another_model,
        ["predict", "--model", "{runs}/export", "{runs}/clip.mp4"], {}, "", 2,
        "model.h5: its sha256 differs from the one {runs}/export/model_card.json records: the "
        "file was replaced since the export; export the run again"),
    "--inner-folds 1": (
        _nothing, [*TUNE, "--nested", "--inner-folds", "1"], {}, "", 2,
        "'1' is not a fold count of 2 or more"),
}  # fmt: skip


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "LUSHPO_", "AWS_"))}


def _lushpo(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([LUSHPO, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Made:
    """One tiny study run by `lushpo tune` and exported by `lushpo export` (~1 min)."""
    root = tmp_path_factory.mktemp("made")
    uri, _key, _fs = put_synthetic(root / "store", clips=24, frames=4, dim=8)
    (root / "study.yaml").write_text(STUDY)
    for argv in (
        [a.format(store=uri, runs=root / "runs") for a in TUNE],
        ["export", str(root / "runs" / "tiny"), "--out", str(root / "export")],
    ):
        done = _lushpo(argv, root, _env())
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return Made(uri, root / "runs" / "tiny", root / "export")


@pytest.mark.parametrize("case", list(CASES))
def test_nothing_of_the_users_is_lost(case, made, tmp_path):
    make, argv, extra_env, more_yaml, code, says = CASES[case]
    study = STUDY + more_yaml
    if case == "a backbone lushpo cannot extract":
        study = study.replace("backbone: synthetic", "backbone: resnet50")
    (tmp_path / "study.yaml").write_text(study)
    runs = tmp_path / "runs"
    undo = make(runs, made)
    try:
        before = _listing(runs)
        argv = [a.format(store=made.store, runs=runs, run=made.run) for a in argv]
        extra_env = {k: v.format(runs=runs) for k, v in extra_env.items()}
        done = _lushpo(argv, tmp_path, _env() | extra_env)
    finally:
        for step in undo:
            step()
    assert done.returncode == code, done.stdout + done.stderr
    verb = argv[0]
    out = done.stderr.splitlines() + done.stdout.splitlines()
    lines = [line for line in out if line.startswith((f"lushpo {verb}", "CORRUPT:"))]
    lines += [line for line in done.stderr.splitlines() if "error:" in line and line not in lines]
    assert len(lines) == 1 and says.format(runs=runs) in lines[0], done.stdout + done.stderr
    assert "s3cret" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    after = _listing(runs)
    after.pop("keras/keras.json", None)  # Keras' own config, in the KERAS_HOME the case gave it
    assert after == before, "a user's file was lost or changed"
    # the name is not blocked: a plain tune of it would not say "already exists"
    assert not (runs / "tiny").exists() or before, sorted((runs / "tiny").rglob("*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "study.yaml"], "new folders"


def test_export_and_evaluate_elsewhere_read_the_studys_store_and_write_0644(made, tmp_path):
    """Why 7: export and evaluate looked for features in the project store, not the store the
    study used; the model card and reports were written 0600, the rest of an export 0644."""
    out = tmp_path / "export"
    for argv in (
        ["export", str(made.run), "--out", str(out)],
        ["evaluate", str(out), "--no-paper"],
    ):
        done = _lushpo(argv, tmp_path, _env())  # no --store, and no .lushpo/store here
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not (tmp_path / ".lushpo").exists()
    modes = {p.relative_to(out).as_posix(): oct(p.stat().st_mode & 0o777)
             for p in out.rglob("*") if p.is_file()}  # fmt: skip
    assert {"model_card.json", "report.md", "model.h5"} <= set(modes)
    assert set(modes.values()) == {"0o644"}, modes
