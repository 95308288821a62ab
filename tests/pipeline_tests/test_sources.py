"""pipeline.sources against a loopback HTTP server this module starts (retries, Range resume,
checksum pins, 404s), copying from a local dir, `check` and `lushpo data fetch|check` on
../shared/data."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hpo.cli import main
from pipeline.sources import (
    PINNED_FILES,
    PINNED_POCUS_COMMIT,
    POCUS_BASE_URL,
    ChecksumMismatchError,
    DownloadError,
    PinnedFile,
    check,
    fetch,
)

# --- loopback server ---------------------------------------------------------------------------


@dataclass
class _State:
    files: dict[str, bytes] = field(default_factory=dict)  # URL path -> body
    plan: dict[str, list] = field(default_factory=dict)  # URL path -> [500 | ("cut", n), ...]
    log: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    redirects: dict[str, str] = field(default_factory=dict)  # URL path -> Location
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.log if p == path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: _State

    def do_GET(self) -> None:
        path = urllib.parse.unquote(self.path)
        rng = self.headers.get("Range")
        with self.state.lock:
            self.state.log.append((path, rng))
            plan = self.state.plan.get(path) or []
            action = plan.pop(0) if plan else None
        if action == 500:
            self._empty(500)
            return
        if path in self.state.redirects:
            self._empty(302, {"Location": self.state.redirects[path]})
            return
        body = self.state.files.get(path)
        if body is None:
            self._empty(404)
            return
        start = 0
        if rng:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(body):
                self._empty(416, {"Content-Range": f"bytes */{len(body)}"})
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if isinstance(action, tuple) and action[0] == "cut":  # send part, then drop the line
            self.wfile.write(body[start : start + action[1]])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body[start:])

    def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@dataclass
class _Server:
    url: str
    state: _State

    @property
    def pocus(self) -> str:
        return self.url + "/pocus/"

    @property
    def paper(self) -> str:
        return self.url + "/paper/"


@pytest.fixture
def server() -> Iterator[_Server]:
    state = _State()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield _Server(f"http://127.0.0.1:{httpd.server_address[1]}", state)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# --- synthetic sources -------------------------------------------------------------------------

CLIPS = {
    "Cov-Atlas+(44).gif": b"GIF89a" + bytes(range(256)) * 20,
    "Reg_Butterfly_Normal Lung A lines.avi": b"RIFF" + bytes(range(255, -1, -1)) * 30,
    "pneu-everyday.mp4": b"\x00\x00\x00\x18ftypmp42" + b"x" * 7000,
}
GONE = "Cov-not-at-commit.mp4"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _paper_files() -> dict[str, bytes]:
    labels = {"Cov-Atlas+(44).gif": "cov", GONE: "cov"}
    labels |= {"Reg_Butterfly_Normal Lung A lines.avi": "reg", "pneu-everyday.mp4": "pne"}
    rows = "".join(f"{label},{name},30\n" for name, label in labels.items())
    names = list(labels)
    cross_val = {
        "0": {
            "test": [names[:2], [labels[n] for n in names[:2]]],
            "train": [names[2:], [labels[n] for n in names[2:]]],
        },
        "1": {
            "test": [names[2:], [labels[n] for n in names[2:]]],
            "train": [names[:2], [labels[n] for n in names[:2]]],
        },
    }
    return {
        "paper/videos.csv": ("label,filename,frames\n" + rows).encode(),
        "paper/cross_val.json": json.dumps(cross_val).encode(),
        "pocus/dataset_metadata.csv": b"Filename,License\nCov-Atlas,CC BY-NC 4.0\n",
    }


def _pins(files: dict[str, bytes]) -> tuple[PinnedFile, ...]:
    return tuple(
        PinnedFile(dest, source, url_path, _sha(files[dest]), len(files[dest]))
        for dest, source, url_path in (
            ("paper/videos.csv", "paper", "videos.csv"),
            ("paper/cross_val.json", "paper", "cross_val.json"),
            ("pocus/dataset_metadata.csv", "pocus", "data/dataset_metadata.csv"),
        )
    )


def _serve(server: _Server, files: dict[str, bytes], clips: dict[str, bytes]) -> None:
    for pin in _pins(_paper_files()):
        server.state.files[f"/{pin.source}/{pin.url_path}"] = files[pin.dest]
    for name, body in clips.items():
        server.state.files[f"/pocus/data/pocus_videos/convex/{name}"] = body


def _clip_path(name: str) -> str:
    return f"/pocus/data/pocus_videos/convex/{name}"


def _fetch(server: _Server, dest: Path, **kwargs):
    kwargs.setdefault("pinned", _pins(_paper_files()))
    return fetch(
        dest,
        pocus_base_url=server.pocus,
        paper_base_url=server.paper,
        backoff_s=0.001,
        jobs=2,
        **kwargs,
    )


# --- fetch over HTTP ---------------------------------------------------------------------------


def test_fetch_downloads_verifies_and_records_checksums(server, tmp_path):
    files = _paper_files()
    _serve(server, files, CLIPS)
    report = _fetch(server, tmp_path)
    for rel, body in files.items():
        assert (tmp_path / rel).read_bytes() == body
    for name, body in CLIPS.items():
        assert (tmp_path / "pocus" / "convex" / name).read_bytes() == body
    assert report.missing == (GONE,)
    assert set(report.fetched) == set(files) | {f"pocus/convex/{n}" for n in CLIPS}
    assert report.bytes_fetched == sum(map(len, files.values())) + sum(map(len, CLIPS.values()))
    checksums = json.loads((tmp_path / "checksums.json").read_text())
    assert set(checksums) == set(report.fetched)
    entry = checksums["pocus/convex/Cov-Atlas+(44).gif"]
    assert entry["sha256"] == _sha(CLIPS["Cov-Atlas+(44).gif"])
    assert entry["size"] == len(CLIPS["Cov-Atlas+(44).gif"])
    # names are percent-encoded in the URL (space, +, parentheses)
    assert entry["url"] == server.pocus + "data/pocus_videos/convex/Cov-Atlas%2B%2844%29.gif"
    assert not list(tmp_path.rglob("*.part"))


def test_fetch_retries_transient_500s(server, tmp_path):
    _serve(server, _paper_files(), CLIPS)
    name = "pneu-everyday.mp4"
    server.state.plan[_clip_path(name)] = [500, 500]
    server.state.plan["/paper/videos.csv"] = [500]
    report = _fetch(server, tmp_path, attempts=3)
    assert (tmp_path / "pocus" / "convex" / name).read_bytes() == CLIPS[name]
    assert len(server.state.gets(_clip_path(name))) == 3
    assert len(server.state.gets("/paper/videos.csv")) == 2
    assert f"pocus/convex/{name}" in report.fetched


def test_fetch_gives_up_after_its_attempts_but_keeps_checksums(server, tmp_path):
    _serve(server, _paper_files(), CLIPS)
    name = "pneu-everyday.mp4"
    server.state.plan[_clip_path(name)] = [500] * 10
    with pytest.raises(DownloadError, match=r"pneu-everyday\.mp4: HTTP 500"):
        _fetch(server, tmp_path, attempts=3)
    assert len(server.state.gets(_clip_path(name))) == 3
    checksums = json.loads((tmp_path / "checksums.json").read_text())
    assert "paper/videos.csv" in checksums  # what did arrive is recorded
    assert f"pocus/convex/{name}" not in checksums
    # cross_val.json comes last: without it `lushpo run` knows to fetch again.
    assert not (tmp_path / "paper" / "cross_val.json").exists()
    _serve(server, _paper_files(), CLIPS)
    server.state.plan.clear()
    _fetch(server, tmp_path, attempts=3)
    assert (tmp_path / "paper" / "cross_val.json").is_file()


def test_fetch_resumes_a_partial_file_with_range(server, tmp_path):
    _serve(server, _paper_files(), CLIPS)
    name = "Reg_Butterfly_Normal Lung A lines.avi"
    part = tmp_path / "pocus" / "convex" / f"{name}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(CLIPS[name][:1000])
    _fetch(server, tmp_path)
    assert server.state.gets(_clip_path(name)) == ["bytes=1000-"]
    assert (tmp_path / "pocus" / "convex" / name).read_bytes() == CLIPS[name]
    assert not part.exists()


def test_fetch_resumes_after_a_dropped_connection(server, tmp_path):
    _serve(server, _paper_files(), CLIPS)
    name = "Cov-Atlas+(44).gif"
    server.state.plan[_clip_path(name)] = [("cut", 3000)]
    _fetch(server, tmp_path)
    assert server.state.gets(_clip_path(name)) == [None, "bytes=3000-"]
    assert (tmp_path / "pocus" / "convex" / name).read_bytes() == CLIPS[name]


def test_fetch_follows_redirects_and_keeps_range(server, tmp_path):
    """github.com/<repo>/raw/<ref>/<file> answers 302 to raw.githubusercontent.com."""
    files = _paper_files()
    _serve(server, files, CLIPS)
    server.state.files["/raw/cross_val.json"] = server.state.files.pop("/paper/cross_val.json")
    server.state.redirects["/paper/cross_val.json"] = server.url + "/raw/cross_val.json"
    part = tmp_path / "paper" / "cross_val.json.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(files["paper/cross_val.json"][:50])
    _fetch(server, tmp_path)
    assert server.state.gets("/paper/cross_val.json") == ["bytes=50-"]
    assert server.state.gets("/raw/cross_val.json") == ["bytes=50-"]
    assert (tmp_path / "paper" / "cross_val.json").read_bytes() == files["paper/cross_val.json"]


def test_fetch_checksum_mismatch_names_file_expected_and_got(server, tmp_path):
    files = _paper_files()
    _serve(server, files, CLIPS)
    tampered = files["paper/videos.csv"] + b"reg,extra.mp4,10\n"
    server.state.files["/paper/videos.csv"] = tampered
    expected = _sha(files["paper/videos.csv"])
    with pytest.raises(ChecksumMismatchError) as info:
        _fetch(server, tmp_path)
    message = str(info.value)
    assert "paper/videos.csv" in message
    assert f"expected {expected}" in message and f"got {_sha(tampered)}" in message
    assert not (tmp_path / "paper" / "videos.csv").exists()
    assert not list(tmp_path.rglob("*.part"))


def test_fetch_again_downloads_nothing_and_merges_checksums(server, tmp_path):
    _serve(server, _paper_files(), CLIPS)
    first = _fetch(server, tmp_path)
    before = json.loads((tmp_path / "checksums.json").read_text())
    gets = len(server.state.log)
    server.state.files[_clip_path(GONE)] = b"now it exists" * 10
    second = _fetch(server, tmp_path)
    after = json.loads((tmp_path / "checksums.json").read_text())
    new_requests = [p for p, _ in server.state.log[gets:]]
    assert new_requests == [_clip_path(GONE)]  # only the clip that was missing
    assert set(second.present) == set(first.fetched)
    assert second.fetched == (f"pocus/convex/{GONE}",) and second.missing == ()
    assert {k: v for k, v in after.items() if k in before} == before
    assert after[f"pocus/convex/{GONE}"]["size"] == 130


def test_fetch_replaces_a_present_file_that_fails_its_pin(server, tmp_path):
    files = _paper_files()
    _serve(server, files, CLIPS)
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "cross_val.json").write_text("{}")
    report = _fetch(server, tmp_path)
    assert (tmp_path / "paper" / "cross_val.json").read_bytes() == files["paper/cross_val.json"]
    assert "paper/cross_val.json" in report.fetched


def test_fetch_from_local_dir_copies_everything(tmp_path):
    files = _paper_files()
    source = tmp_path / "source"
    for rel, body in files.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(body)
    (source / "pocus" / "convex").mkdir()
    for name, body in CLIPS.items():
        (source / "pocus" / "convex" / name).write_bytes(body)
    (source / "pocus" / "convex" / "Vir_extra.mp4").write_bytes(b"viral")
    dest = tmp_path / "dest"
    report = fetch(dest, source_dir=source, pinned=_pins(files))
    assert report.missing == (GONE,)
    assert sorted(p.name for p in (dest / "pocus" / "convex").iterdir()) == sorted(
        [*CLIPS, "Vir_extra.mp4"]
    )
    checksums = json.loads((dest / "checksums.json").read_text())
    assert checksums["pocus/convex/Vir_extra.mp4"]["url"].startswith("file://")
    assert checksums["pocus/convex/Vir_extra.mp4"]["sha256"] == _sha(b"viral")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        fetch(dest, source_dir=tmp_path / "nope")


@pytest.mark.integration
def test_fetch_real_pins_over_http(server, tmp_path, shared_data_dir):
    """The real pinned digests and real clip names (+, parentheses) over HTTP."""
    for pin in PINNED_FILES:
        body = (shared_data_dir / pin.dest).read_bytes()
        server.state.files[f"/{pin.source}/{pin.url_path}"] = body
    served = ["Cov-Atlas+(44).gif", "Reg_liftl_case3_clip2.mp4"]
    for name in served:
        server.state.files[_clip_path(name)] = (
            shared_data_dir / "pocus" / "convex" / name
        ).read_bytes()
    report = fetch(
        tmp_path, pocus_base_url=server.pocus, paper_base_url=server.paper, jobs=8, backoff_s=0
    )
    assert len(report.missing) == 185 - len(served)
    result = check(tmp_path)
    assert len(result.present) == len(served) and result.total == 185
    assert set(result.pinned.values()) == {"ok"}


# --- pins, URLs, check -------------------------------------------------------------------------


def test_pinned_urls_point_at_the_pinned_commits():
    assert PINNED_POCUS_COMMIT in POCUS_BASE_URL and len(PINNED_POCUS_COMMIT) == 40
    assert {p.dest for p in PINNED_FILES} == {
        "paper/cross_val.json",
        "paper/videos.csv",
        "paper/evaluation.csv",
        "paper/model_params.txt",
        "pocus/dataset_metadata.csv",
    }


@pytest.mark.integration
def test_pins_match_shared_data(shared_data_dir):
    for pin in PINNED_FILES:
        data = (shared_data_dir / pin.dest).read_bytes()
        assert (_sha(data), len(data)) == (pin.sha256, pin.size), pin.dest


@pytest.mark.integration
def test_check_shared_data(shared_data_dir):
    report = check(shared_data_dir)
    assert (len(report.present), report.total) == (119, 185)
    assert {k: (v.present, v.total) for k, v in report.per_class.items()} == {
        "cov": (27, 69),
        "pne": (36, 50),
        "reg": (56, 66),
    }
    assert [(f.present, f.total) for f in report.per_fold] == [
        (17, 36),
        (20, 36),
        (21, 37),
        (36, 37),
        (25, 39),
    ]
    assert report.per_fold[1].per_class["cov"].present == 0
    assert report.per_fold[2].per_class["cov"].present == 1
    assert report.extra == ("Vir_liftl_H1N1_case2_clip1.mp4", "Vir_whitelung_h1n1.mp4")
    assert len(report.missing) == 66
    assert {k: len(v) for k, v in report.missing_by_class.items()} == {
        "cov": 42,
        "pne": 14,
        "reg": 10,
    }
    assert set(report.pinned.values()) == {"ok"}


def test_check_without_paper_files_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="lushpo data fetch"):
        check(tmp_path)


# --- CLI ---------------------------------------------------------------------------------------


@pytest.mark.integration
def test_cli_check_table(shared_data_dir, capsys, monkeypatch):
    monkeypatch.setenv("LUSHPO_DATA_DIR", str(shared_data_dir))
    assert main(["data", "check"]) == 0
    out = capsys.readouterr().out
    assert "paper clips present: 119 of 185" in out
    for label, present, total in (("cov", 27, 69), ("pne", 36, 50), ("reg", 56, 66)):
        assert re.search(rf"^{label}\s+{present}\s+{total}$", out, re.M), label
    rows = re.findall(r"^(\d)\s+(\d+)/(\d+)\s+(\d+)/(\d+)\s+(\d+)/(\d+)\s+(\d+)/(\d+)$", out, re.M)
    assert [(int(r[0]), int(r[1])) for r in rows] == [(0, 17), (1, 20), (2, 21), (3, 36), (4, 25)]
    assert "fold 1 has no cov" in out
    assert "Vir_whitelung_h1n1.mp4" in out and "missing clips: 66" in out


@pytest.mark.integration
def test_cli_check_json(shared_data_dir, capsys):
    assert main(["data", "check", "--data-dir", str(shared_data_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["present_count"], report["total"]) == (119, 185)
    assert report["per_class"]["cov"] == {"present": 27, "total": 69}
    assert [f["present"] for f in report["per_fold"]] == [17, 20, 21, 36, 25]


def test_cli_needs_a_data_dir(monkeypatch, capsys):
    monkeypatch.delenv("LUSHPO_DATA_DIR", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["data", "check"])
    assert exited.value.code == 2  # a missing input: a usage error (README)
    assert "pass --data-dir or set $LUSHPO_DATA_DIR" in capsys.readouterr().err
    assert main(["data", "check", "--data-dir", "/no/such/folder"]) == 2
    assert "/no/such/folder does not exist; run `lushpo data fetch" in capsys.readouterr().err


def test_cli_check_error_exit(tmp_path, capsys):
    assert main(["data", "check", "--data-dir", str(tmp_path)]) == 1
    assert "lushpo data fetch" in capsys.readouterr().err


@pytest.mark.integration
def test_cli_fetch_from_local_copy(shared_data_dir, tmp_path, capsys):
    source = tmp_path / "source"
    for pin in PINNED_FILES:
        (source / pin.dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data_dir / pin.dest, source / pin.dest)
    clips = sorted((shared_data_dir / "pocus" / "convex").iterdir(), key=lambda p: p.stat().st_size)
    (source / "pocus" / "convex").mkdir()
    for clip in clips[:2]:
        shutil.copyfile(clip, source / "pocus" / "convex" / clip.name)
    dest = tmp_path / "data"
    argv = ["data", "fetch", "--data-dir", str(dest), "--from", str(source), "--jobs", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    paper_copied = sum(1 for c in clips[:2] if not c.name.startswith("Vir"))
    assert f"{185 - paper_copied} clip(s) not at the source" in out
    checksums = json.loads((dest / "checksums.json").read_text())
    assert len(checksums) == len(PINNED_FILES) + 2
    assert main(["data", "check", "--data-dir", str(dest), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["present_count"] == paper_copied
