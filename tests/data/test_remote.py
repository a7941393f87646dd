"""Training from shards on an S3-compatible object store: a real moto server on loopback, real boto3
uploads and mosaicml-streaming's real S3 downloader. Credentials come from the environment only and
never reach the run directory or the logs."""
import os
import socket

import pytest

from tests.conftest import TINY, restore_env, run_cli, sets, train_records

pytestmark = pytest.mark.slow

SECRET = "megadlm-test-secret-key-never-logged"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "megadlm-test", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    server.stop()
    restore_env(saved)


def upload(directory, bucket, prefix):
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"])
    client.create_bucket(Bucket=bucket)
    count = 0
    for base, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(base, name)
            client.upload_file(path, bucket, f"{prefix}/{os.path.relpath(path, directory)}")
            count += 1
    return count


def all_text(root) -> str:
    out = []
    for base, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(base, name), "rb") as f:
                out.append(f.read().decode("latin-1"))
    return "\n".join(out)


def test_training_from_s3_matches_local_shards(s3, tiny_data, tmp_path, monkeypatch):
    assert upload(tiny_data, "shards", "tiny") >= 4
    monkeypatch.setenv("MEGADLM_CACHE", str(tmp_path / "cache"))
    args = sets(*TINY, "schedule.max_steps=4")
    remote = run_cli("train", "tiny_mdm", *args, "--set", "data.remote=s3://shards/tiny",
                     "--run-dir", str(tmp_path / "remote"), nproc=2)
    local = run_cli("train", "tiny_mdm", *args, f"--set=data.path={tiny_data}",
                    "--run-dir", str(tmp_path / "local"), nproc=2)
    ours = [(r["step"], r["loss"]) for r in train_records(tmp_path / "remote")]
    assert ours == [(r["step"], r["loss"]) for r in train_records(tmp_path / "local")] and len(ours) == 4
    # shards came through streaming's cache, the manifest through megadlm's metadata cache
    assert list((tmp_path / "remote" / ".cache").rglob("shard.00000.mds*"))
    assert list((tmp_path / "cache" / "remote").rglob("manifest.json"))
    assert SECRET not in all_text(tmp_path / "remote") + remote.stdout + remote.stderr
    assert local.returncode == 0


def test_missing_bucket_or_credentials_is_one_clear_error(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("MEGADLM_CACHE", str(tmp_path / "cache"))
    proc = run_cli("train", "tiny_mdm", *sets(*TINY, "data.remote=s3://no-such-bucket/tiny"),
                   "--run-dir", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot download s3://no-such-bucket/tiny/manifest.json" in proc.stderr
    assert "Traceback" not in proc.stderr and SECRET not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_saved_config_naming_another_machines_cache_fetches_again(s3, tiny_data, tmp_path, monkeypatch):
    """A Slurm job's saved config names the login node's metadata cache; a compute node without
    that cache fetches the manifest again, into the same path."""
    upload(tiny_data, "again", "tiny")
    elsewhere = tmp_path / "login-node-cache" / "meta"
    run_cli("train", "tiny_mdm", *sets(*TINY, "data.remote=s3://again/tiny", f"data.path={elsewhere}",
                                       "schedule.max_steps=1"), "--run-dir", str(tmp_path / "run"))
    assert (elsewhere / "manifest.json").is_file() and len(train_records(tmp_path / "run")) == 1


def _objects(bucket: str, prefix: str) -> dict[str, bytes]:
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return {k[len(prefix) + 1:]: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def _local_files(root) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(base, n), root): open(os.path.join(base, n), "rb").read()
            for base, _, names in os.walk(root) for n in names}


def _without_timing(manifest: bytes) -> dict:
    import json

    record = json.loads(manifest)
    return {k: v for k, v in record.items() if k not in ("created", "prepare_seconds")}


def test_prepare_to_s3_writes_what_a_local_prepare_writes_and_training_reads_it(s3, tiny_data, tmp_path,
                                                                                 monkeypatch):
    import boto3

    boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"]).create_bucket(Bucket="published")
    monkeypatch.setenv("MEGADLM_CACHE", str(tmp_path / "cache"))
    # the tiny_data fixture's own corpus and arguments (tests/conftest.py)
    proc = run_cli("prepare", "--input", str(tiny_data.parent / "corpus"), "--out", "s3://published/tiny",
                   "--seq-len", "32", "--val-fraction", "0.1", "--max-tokens", "100000", "--no-progress")
    assert "wrote s3://published/tiny" in proc.stdout and SECRET not in proc.stdout + proc.stderr
    uploaded, local = _objects("published", "tiny"), _local_files(tiny_data)
    assert sorted(uploaded) == sorted(local) and len(local) >= 4
    for name in local:
        if name == "manifest.json":
            assert _without_timing(uploaded[name]) == _without_timing(local[name])
        else:
            assert uploaded[name] == local[name], name
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and "upload" in p.parts]
    # and a run names it as data.remote
    args = sets(*TINY, "schedule.max_steps=2")
    run_cli("train", "tiny_ar", *args, "--set", "data.remote=s3://published/tiny",
            "--run-dir", str(tmp_path / "remote"))
    run_cli("train", "tiny_ar", *args, f"--set=data.path={tiny_data}", "--run-dir", str(tmp_path / "local"))
    losses = [[r["loss"] for r in train_records(tmp_path / run)] for run in ("remote", "local")]
    assert losses[0] == losses[1] and len(losses[0]) == 2


def test_prepare_to_a_used_or_unreachable_prefix_is_refused_before_tokenizing(s3, tiny_data, tmp_path,
                                                                              monkeypatch):
    upload(tiny_data, "used", "tiny")
    before = _objects("used", "tiny")
    monkeypatch.setenv("MEGADLM_CACHE", str(tmp_path / "cache"))
    corpus = str(tiny_data.parent / "corpus")
    cases = {
        "s3://used/tiny": "already holds",
        "s3://no-such-bucket/tiny": "cannot write to s3://no-such-bucket/tiny",
    }
    for out, message in cases.items():
        proc = run_cli("prepare", "--input", corpus, "--out", out, "--no-progress", check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and SECRET not in proc.stderr
    proc = run_cli("prepare", "--input", corpus, "--out", "s3://used/other", "--overwrite", "--no-progress",
                   check=False)
    assert proc.returncode == 2 and "never overwritten in place" in proc.stderr
    assert _objects("used", "tiny") == before and not _objects("used", "other")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
