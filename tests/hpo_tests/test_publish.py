"""`lushpo publish` (and `lushpo run --out s3://…`): an export folder copied to an S3 prefix by the
export folder's rules; moto in server mode on loopback."""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import pytest

from hpo.cli import main
from hpo.cli._commands.run import pipeline_steps
from hpo.results import MANIFEST, add_files


def _export(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    add_files(folder, files)
    return folder


def _objects(bucket: str, prefix: str) -> dict[str, bytes]:
    s3 = boto3.client("s3")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {
        o["Key"][len(prefix) :]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        for o in listed
    }


def test_publish_replaces_only_the_earlier_export_and_refuses_a_prefix_of_the_users(
    s3_endpoint, tmp_path, capsys
):
    bucket = f"results-{uuid.uuid4().hex[:8]}"  # moto's backend outlives each endpoint
    boto3.client("s3").create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/studies/tiny"
    first = _export(tmp_path / "a", {"model.h5": "m1", "fold-0.h5": "f0", "report.md": "r1"})
    assert main(["publish", str(first), uri]) == 0
    assert _objects(bucket, "studies/tiny/").keys() == {"model.h5", "fold-0.h5", "report.md",
                                                        MANIFEST}  # fmt: skip

    second = _export(tmp_path / "b", {"model.h5": "m2", "sub/report.json": "{}"})
    assert main(["publish", str(second), uri]) == 0
    objects = _objects(bucket, "studies/tiny/")
    assert objects.keys() == {"model.h5", "sub/report.json", MANIFEST}, "old files were kept"
    assert objects["model.h5"] == b"m2"

    boto3.client("s3").put_object(Bucket=bucket, Key="mine/thesis.tex", Body=b"\\chapter{}")
    capsys.readouterr()
    assert main(["publish", str(second), f"s3://{bucket}/mine"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lushpo publish: s3://{bucket}/mine holds objects lushpo did not write "
                   "(thesis.tex); choose another prefix"]  # fmt: skip
    assert _objects(bucket, "mine/") == {"thesis.tex": b"\\chapter{}"}
    assert main(["publish", str(tmp_path / "nothing"), uri]) == 1  # no export in the folder
    assert main(["publish", str(second), f"s3://{bucket}"]) == 1  # a whole bucket


def test_a_publish_that_died_midway_is_replaced_by_the_next(s3_endpoint, tmp_path, monkeypatch):
    """The list naming old and new files goes up first, so objects a dead publish left behind
    are lushpo's to replace, not a user's to refuse."""
    import hpo.results._export_folder as export_folder

    bucket = f"results-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/tiny"
    assert main(["publish", str(_export(tmp_path / "a", {"old.h5": "o"})), uri]) == 0
    new = _export(tmp_path / "b", {"new.h5": "n", "model.h5": "m"})
    real = boto3.client

    def dying_client(*args, **kwargs):
        client = real(*args, **kwargs)
        uploads = []

        def upload_file(path, bucket_, key):
            if uploads:
                raise OSError("killed")  # the process dies after the first new object
            uploads.append(key)
            return type(client).upload_file(client, path, bucket_, key)

        client.upload_file = upload_file
        return client

    monkeypatch.setattr(boto3, "client", dying_client)
    with pytest.raises(OSError, match="killed"):
        export_folder.publish(new, uri)
    monkeypatch.setattr(boto3, "client", real)
    assert main(["publish", str(new), uri]) == 0
    assert _objects(bucket, "tiny/").keys() == {"new.h5", "model.h5", MANIFEST}


def test_run_with_an_s3_results_dir_exports_in_the_cache_then_publishes(tmp_path):
    """The RayJob's `lushpo run` with LUSHPO_RESULTS_DIR=s3://…: export and evaluate write a
    folder of the node cache, and the last step publishes it under <prefix>/<name>."""
    from hpo.cli._main import build_parser

    config = tmp_path / "study.yaml"
    config.write_text(
        "name: tiny\nfeature_set: {backbone: mobilenetv2, frames: 4}\n"
        "split: {kind: stratified, k: 3}\n"
    )
    args = build_parser().parse_args(["run", "--config", str(config), "--store", str(tmp_path)])
    environ = {"LUSHPO_RESULTS_DIR": "s3://bucket/results/", "LUSHPO_CACHE_DIR": str(tmp_path),
               "LUSHPO_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    _cfg, steps = pipeline_steps(args, environ)
    verbs = [argv for _module, argv in steps]
    staged = str(tmp_path / "exports" / "tiny")
    assert verbs[-1] == ["publish", staged, "s3://bucket/results/tiny"]
    assert verbs[-2][:2] == ["evaluate", staged]
    assert verbs[-3][verbs[-3].index("--out") + 1] == staged
    # a local results dir is exported into directly, with no publish step
    _cfg, steps = pipeline_steps(args, environ | {"LUSHPO_RESULTS_DIR": str(tmp_path / "out")})
    assert [argv[0] for _m, argv in steps][-2:] == ["export", "evaluate"]


@pytest.mark.parametrize("uri", ["/tmp/x", "gs://bucket/x"])
def test_publish_takes_only_s3(uri, tmp_path, capsys):
    assert main(["publish", str(tmp_path), uri]) == 2
    assert "is not an s3:// URI" in capsys.readouterr().err
