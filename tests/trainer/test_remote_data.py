"""Datasets in S3 (moto's server on loopback) and over HTTPS (a TLS server with a throwaway CA): the
trainer copies what the URI names, trains on it, and fails the adapter with a reason when it cannot."""

from __future__ import annotations

import contextlib
import http.server
import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from loraplex.api.trainingjob import Dataset
from loraplex.e2e.adapter_store import AdapterStore
from loraplex.e2e.waiting import wait_until
from loraplex.worker.s3 import s3_client_from_env
from loraplex.worker.trainer import remote_data
from loraplex.worker.trainer.config import TrainerConfig
from loraplex.worker.trainer.failures import PreparationCancelled, TrainingFailure
from loraplex.worker.trainer.progress import Recorder
from loraplex.worker.trainer.remote_data import fetch_dataset
from loraplex.worker.trainer.training import Trainer
from tests.trainer.conftest import adapter_job

BUCKET = "datasets"


@pytest.fixture
def bucket(s3_bucket: Callable[[str], Any]) -> Any:
    return s3_bucket(BUCKET)


def put(client: Any, key: str, text: str) -> None:
    data = text.encode()
    client.put_object(BUCKET, key, io.BytesIO(data), len(data))


def fetched(uri: str, scratch: Path) -> Path:
    copy = fetch_dataset(Dataset(uri=uri), scratch, s3_client_from_env)
    assert copy.uri.startswith("file:///")
    return Path(copy.uri.removeprefix("file://"))


def test_an_s3_object_is_copied_alone_and_a_prefix_as_a_folder(tmp_path: Path, bucket: Any) -> None:
    put(bucket, f"{tmp_path.name}/sql/train.jsonl", '{"text": "a"}\n')
    put(bucket, f"{tmp_path.name}/sql/train.jsonl.bak", "not this one\n")
    put(bucket, f"{tmp_path.name}/sql/more/part-2.jsonl", '{"text": "b"}\n')
    one = fetched(f"s3://{BUCKET}/{tmp_path.name}/sql/train.jsonl", tmp_path / "one")
    assert one.is_file()
    assert list(one.parent.iterdir()) == [one]  # the .bak sibling shares the prefix, not the key
    folder = fetched(f"s3://{BUCKET}/{tmp_path.name}/sql", tmp_path / "folder")
    # A folder's files, as a local folder is read: not its subfolders.
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "train.jsonl",
        "train.jsonl.bak",
    ]


def test_a_cancelled_copy_of_an_s3_folder_stops_between_objects(tmp_path: Path, bucket: Any) -> None:
    for part in range(3):
        put(bucket, f"{tmp_path.name}/big/part-{part}.jsonl", '{"text": "a"}\n')
    cancel = threading.Event()
    client = s3_client_from_env()
    fetch = client.fget_object

    def fetch_then_leave(*args: Any, **kwargs: Any) -> Any:
        result = fetch(*args, **kwargs)
        cancel.set()  # the tenant leaves while its first object comes down
        return result

    client.fget_object = fetch_then_leave
    uri = f"s3://{BUCKET}/{tmp_path.name}/big"
    with pytest.raises(PreparationCancelled):
        fetch_dataset(Dataset(uri=uri), tmp_path / "copy", lambda: client, cancel=cancel)
    assert [p.name for p in (tmp_path / "copy" / "dataset").iterdir()] == ["part-0.jsonl"]


def test_a_missing_s3_dataset_fails_the_adapter_with_dataset_not_found(tmp_path: Path, bucket: Any) -> None:
    with pytest.raises(TrainingFailure) as failure:
        fetched(f"s3://{BUCKET}/{tmp_path.name}/nothing-here.jsonl", tmp_path / "copy")
    assert failure.value.reason == "DatasetNotFound"
    assert "nothing-here.jsonl" in failure.value.message


@pytest.fixture
def https_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AdapterStore]:
    server = AdapterStore(tmp_path / "site").start()
    monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))  # trust its throwaway CA
    yield server
    server.stop()


def test_an_https_file_is_copied_and_a_404_is_dataset_not_found(
    tmp_path: Path, https_files: AdapterStore
) -> None:
    (https_files.root / "train.jsonl").write_text('{"text": "hello"}\n')
    copy = fetched(f"{https_files.url}/train.jsonl", tmp_path / "copy")
    assert copy.read_text() == '{"text": "hello"}\n'
    slept: list[float] = []
    missing = Dataset(uri=f"{https_files.url}/missing.jsonl")
    with pytest.raises(TrainingFailure) as failure:
        fetch_dataset(missing, tmp_path / "copy", s3_client_from_env, slept.append)
    assert failure.value.reason == "DatasetNotFound"
    assert "404" in failure.value.message
    assert slept == []  # a 404 is an answer: not tried again


def test_an_endpoint_that_does_not_answer_is_tried_again_then_fails_the_adapter(tmp_path: Path) -> None:
    slept: list[float] = []
    with pytest.raises(TrainingFailure) as failure:
        fetch_dataset(Dataset(uri="https://127.0.0.1:9/train.jsonl"), tmp_path / "copy", object, slept.append)
    assert failure.value.reason == "DatasetNotFound"
    assert f"unreachable after {remote_data.ATTEMPTS} tries" in failure.value.message
    assert slept == [remote_data.BACKOFF_SECONDS * 2**i for i in range(remote_data.ATTEMPTS - 1)]


def test_redirects_are_not_followed(tmp_path: Path) -> None:
    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(TrainingFailure) as failure:
            remote_data._from_https(
                f"http://127.0.0.1:{server.server_port}/train.jsonl", tmp_path, threading.Event()
            )
        assert "answered 302" in failure.value.message
    finally:
        server.shutdown()
        server.server_close()


def test_a_copy_stops_when_it_is_cancelled(tmp_path: Path) -> None:
    """A warm tenant that leaves mid-copy: a long download stops at the next chunk."""

    class Long(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            chunk = b'{"text": "hello"}\n' * 4096  # 72 KiB, about 7 MB/s: 40 s for the whole
            with contextlib.suppress(OSError):  # the client hung up
                for _ in range(4000):
                    self.wfile.write(chunk)
                    time.sleep(0.01)

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Long)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cancel = threading.Event()
    outcome: list[BaseException] = []

    def copy() -> None:
        try:
            remote_data._from_https(f"http://127.0.0.1:{server.server_port}/train.jsonl", tmp_path, cancel)
        except BaseException as error:
            outcome.append(error)

    copying = threading.Thread(target=copy, daemon=True)
    copying.start()
    try:
        target = tmp_path / "train.jsonl"
        wait_until(lambda: target.is_file() and target.stat().st_size > 1 << 20, 30, "copying")
        cancel.set()
        copying.join(30)
        assert not copying.is_alive(), "the copy went on after it was cancelled"
        assert [type(error) for error in outcome] == [PreparationCancelled]
    finally:
        server.shutdown()
        server.server_close()


async def test_the_trainer_trains_on_an_s3_dataset_and_leaves_no_copy_behind(
    tmp_path: Path, bucket: Any, dataset: Callable[..., Path], make_config: Callable[..., TrainerConfig]
) -> None:
    local = dataset("sql")
    put(bucket, f"{tmp_path.name}/sql.jsonl", local.read_text())
    job = adapter_job("sql", local, tmp_path / "out", steps=4)
    job["dataset"] = {"uri": f"s3://{BUCKET}/{tmp_path.name}/sql.jsonl"}
    config = make_config(job, scratchDir=str(tmp_path / "scratch"))
    result = Trainer(config, Recorder()).run()
    (adapter,) = result.adapters
    assert adapter.phase == "Succeeded", adapter
    assert not (tmp_path / "scratch" / "datasets" / "sql").exists()
    missing = adapter_job("gone", local, tmp_path / "out", steps=4)
    missing["dataset"] = {"uri": f"s3://{BUCKET}/{tmp_path.name}/gone.jsonl"}
    (failed,) = Trainer(make_config(missing), Recorder()).run().adapters
    assert (failed.phase, failed.reason) == ("Failed", "DatasetNotFound")
