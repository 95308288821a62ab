"""One error shape, through the real CLI: each bad input gives one stderr line naming the file,
key or value, the documented exit code (2: usage or config, 1: runtime), no traceback, and no new
empty folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

LUSHPO = str(Path(sys.executable).with_name("lushpo"))
NO_AWS = {
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # nothing listens: never reaches AWS
}


def _data_dir(tmp: Path, shared: Path, cross_val: str | None = None) -> Path:
    data = tmp / "data"
    (data / "paper").mkdir(parents=True)
    shutil.copy(shared / "paper" / "videos.csv", data / "paper" / "videos.csv")
    if cross_val is None:
        shutil.copy(shared / "paper" / "cross_val.json", data / "paper" / "cross_val.json")
    else:
        (data / "paper" / "cross_val.json").write_text(cross_val)
    (data / "pocus" / "convex").mkdir(parents=True)
    return data


def _bad_clips(tmp: Path, shared: Path) -> Path:
    data = _data_dir(tmp, shared)
    for name in ("Cov_broken_one.mp4", "Reg_broken_two.mp4"):
        (data / "pocus" / "convex" / name).write_bytes(b"not a video")
    good = sorted((shared / "pocus" / "convex").glob("Pneu*"))[0]
    shutil.copy(good, data / "pocus" / "convex" / good.name)
    return data


def _yaml(tmp: Path, text: str) -> Path:
    path = tmp / "study.yaml"
    path.write_text(text)
    return path


def _features(tmp: Path, shared: Path, weights: str, *extra: str) -> list[str]:
    """`lushpo features` on a data dir with two unreadable clips and one good one."""
    store = (tmp / "store").as_uri()
    data = str(_bad_clips(tmp, shared))
    return ["features", "--backbone", "xception", "--frames", "2", "--weights", weights,
            "--store", store, "--data-dir", data, *extra]  # fmt: skip


CASES = {
    "cross_val.json that is not JSON": (
        lambda t, s: ["data", "check", "--data-dir", str(_data_dir(t, s, '{"0": ['))],
        1,
        "cross_val.json: not valid JSON",
    ),
    "missing --config": (
        lambda t, s: ["tune", "--config", str(t / "nope.yaml")],
        2,
        "nope.yaml: no such file; pass --config",
    ),
    "invalid YAML": (
        lambda t, s: ["tune", "--config", str(_yaml(t, "name: t\nbudget: {trials: [\n"))],
        2,
        "study.yaml: not valid YAML",
    ),
    "unknown config key": (
        lambda t, s: ["tune", "--config", str(_yaml(t, "name: t\nbudgett: {trials: 3}\n"))],
        2,
        "Unknown key 'budgett'",
    ),
    "config value out of range": (
        lambda t, s: ["tune", "--config", str(_yaml(t, "name: t\nbudget: {trials: 0}\n"))],
        2,
        "'budget.trials' key",
    ),
    "export of a run that does not exist": (
        lambda t, s: [
            "export",
            str(t / "runs" / "nope"),
            "--out",
            str(t / "out"),
            "--store",
            (t / "store").as_uri(),
        ],
        2,
        "no such run directory",
    ),
    "store on S3 without credentials": (
        lambda t, s: ["features", "ls", "--store", "s3://lushpo-no-bucket/features"],
        1,
        "S3 access failed",
    ),
    "weights on S3 without credentials": (
        lambda t, s: _features(t, s, "s3://lushpo-no-bucket/w.h5", "--on-bad-clip", "skip"),
        1,
        "S3 access failed",
    ),
    "bad clips with --on-bad-clip fail": (
        lambda t, s: _features(t, s, "none"),
        1,
        "Cov_broken_one.mp4",
    ),
    "evaluate a folder that does not exist": (
        lambda t, s: ["evaluate", str(t / "no-export")],
        2,
        "no-export",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_with_the_documented_exit_code(case, tmp_path, shared_data_dir):
    make_argv, code, named = CASES[case]
    argv = make_argv(tmp_path, shared_data_dir)
    before = {p for p in tmp_path.rglob("*")}
    done = subprocess.run(
        [LUSHPO, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, **NO_AWS},
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == code, (case, done.returncode, done.stderr[-2000:])
    assert len(lines) == 1, (case, lines)
    assert named in lines[0], (case, lines[0])
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    new_empty = [p for p in tmp_path.rglob("*") if p not in before and p.is_dir()
                 and not any(p.iterdir())]  # fmt: skip
    assert not new_empty, (case, new_empty)
    if case == "bad clips with --on-bad-clip fail":
        assert "Reg_broken_two.mp4" in lines[0]  # every bad clip, not only the first


def test_evaluate_without_the_paper_never_replaces_a_fuller_report(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    report = export / "report.json"
    report.write_text('{"paper": {"model_label": "xception-20"}}')
    env = {k: v for k, v in os.environ.items() if k != "LUSHPO_DATA_DIR"}
    for extra, named in (([], "--no-paper"), (["--no-paper"], "compares with the paper")):
        done = subprocess.run([LUSHPO, "evaluate", str(export), *extra], capture_output=True,
                              text=True, timeout=300, env=env)  # fmt: skip
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1 and named in lines[0], done.stderr
    assert report.read_text() == '{"paper": {"model_label": "xception-20"}}'
