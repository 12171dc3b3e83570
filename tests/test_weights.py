"""The pretrained-weights downloader against a fake server on 127.0.0.1 (tests/fake_zenodo.py).

The table, the sha256 and the state-dict check; resume, retries and the sidecar rules
themselves are tested in test_download.py.
"""

import hashlib
import io
import os

import pytest
import torch

from fsmis.data import weights
from fsmis.data.weights import WeightsChecksumError, WeightsError, fetch
from fsmis.errors import InputError

FAST = dict(backoff_s=0.001, timeout_s=5)


def _state_dict_bytes(prefix: str = "backbone.") -> bytes:
    gen = torch.Generator().manual_seed(0)
    state = {
        f"{prefix}conv1.weight": torch.randn(8, 3, 7, 7, generator=gen),
        f"{prefix}bn1.weight": torch.ones(8),
        "classifier.4.weight": torch.randn(21, 8, 1, 1, generator=gen),
        "padding": torch.randn(50_000, generator=gen),  # ~200 kB: room for a truncation
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _register(monkeypatch, key: str, data: bytes, stem: str, prefix: str | None = None, **extra) -> str:
    """Add ``key`` to KNOWN for ``data``, named torchvision-style; return its file name."""
    prefix = prefix or hashlib.sha256(data).hexdigest()[:8]
    file = f"{stem}-{prefix}.pth"
    entry = {"url": f"https://example.invalid/models/{file}", "sha256_prefix": prefix, "file": file, **extra}
    monkeypatch.setitem(weights.KNOWN, key, entry)
    return file


STATE = _state_dict_bytes()
SHA = hashlib.sha256(STATE).hexdigest()


@pytest.fixture
def server(fake_zenodo, monkeypatch):
    file = _register(monkeypatch, "tiny_coco", STATE, "tiny_coco")
    fake_zenodo.add_file(file, STATE)
    monkeypatch.setenv("FSMIS_WEIGHTS_URL", fake_zenodo.files_base)
    fake_zenodo.file = file
    return fake_zenodo


def test_table_names_carry_their_sha256_prefix():
    for key, entry in weights.KNOWN.items():
        assert entry["url"].startswith("https://download.pytorch.org/models/")
        assert entry["url"].rsplit("/", 1)[1] == entry["file"] == weights.file_name(key)
        assert entry["file"].rsplit("-", 1)[1] == f"{entry['sha256_prefix']}.pth"
    assert weights.KNOWN["deeplabv3_resnet101_coco"]["file"] == "deeplabv3_resnet101_coco-586e9e4e.pth"


def test_download_is_verified_and_loadable(server, tmp_path):
    path = fetch("tiny_coco", tmp_path / "weights", **FAST)
    assert path == tmp_path / "weights" / server.file
    assert path.read_bytes() == STATE
    assert (tmp_path / "weights" / f"{server.file}.sha256").read_text(encoding="utf-8") == f"{SHA}  {server.file}\n"
    assert sorted(os.listdir(tmp_path / "weights")) == [server.file, f"{server.file}.sha256"]
    assert server.ranges(server.file) == [None]
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert "backbone.conv1.weight" in state


def test_rerun_downloads_nothing_and_checks_a_file_without_sidecar(server, tmp_path, monkeypatch):
    for _ in range(2):
        fetch("tiny_coco", tmp_path, **FAST)
    assert server.count(server.file) == 1
    # without the sidecar the file is verified by its sha256 and loaded, still not downloaded
    (tmp_path / f"{server.file}.sha256").unlink()
    loaded = []
    monkeypatch.setattr(weights, "check_state_dict", lambda path, report_as=None: loaded.append(path))
    fetch("tiny_coco", tmp_path, **FAST)
    assert server.count(server.file) == 1 and loaded == [tmp_path / server.file]
    assert (tmp_path / f"{server.file}.sha256").exists()


def test_server_error_is_retried_then_fails_clearly(server, tmp_path):
    server.fail_next(server.file, n=2, status=503)
    assert fetch("tiny_coco", tmp_path / "a", **FAST).read_bytes() == STATE
    server.fail_next(server.file, n=100, status=503)
    with pytest.raises(WeightsError, match=r"tiny_coco-.*failed after 2 attempts.*HTTP 503"):
        fetch("tiny_coco", tmp_path / "b", retries=1, **FAST)
    assert not (tmp_path / "b" / server.file).exists()


def test_missing_file_fails_without_retry(fake_zenodo, monkeypatch, tmp_path):
    _register(monkeypatch, "absent", b"whatever", "absent")
    with pytest.raises(WeightsError, match="HTTP 404"):
        fetch("absent", tmp_path, base_url=fake_zenodo.files_base, **FAST)
    assert len(fake_zenodo.requests) == 1


def test_wrong_prefix_fails_and_leaves_nothing(fake_zenodo, monkeypatch, tmp_path):
    file = _register(monkeypatch, "liar", STATE, "liar", prefix="00000000" if SHA[:8] != "00000000" else "11111111")
    fake_zenodo.add_file(file, STATE)
    with pytest.raises(WeightsChecksumError) as info:
        fetch("liar", tmp_path, base_url=fake_zenodo.files_base, retries=1, **FAST)
    message = str(info.value)
    expected = weights.KNOWN["liar"]["sha256_prefix"]
    assert file in message and expected in message and SHA in message
    assert info.value.actual == SHA
    assert fake_zenodo.count(file) == 2  # retried once from zero
    assert os.listdir(tmp_path) == []  # no file, no .part, no sidecar


def test_full_sha256_in_the_table_is_checked(fake_zenodo, monkeypatch, tmp_path):
    bad_full = SHA[:8] + ("0" if SHA[8] != "0" else "1") + SHA[9:]
    file = _register(monkeypatch, "full", STATE, "full", sha256=bad_full)
    fake_zenodo.add_file(file, STATE)
    with pytest.raises(WeightsChecksumError, match=bad_full):
        fetch("full", tmp_path, base_url=fake_zenodo.files_base, retries=0, **FAST)
    monkeypatch.setitem(weights.KNOWN["full"], "sha256", SHA)
    assert fetch("full", tmp_path, base_url=fake_zenodo.files_base, **FAST).read_bytes() == STATE


@pytest.mark.parametrize(
    "data, problem",
    [
        (os.urandom(5000), "not a loadable PyTorch state dict"),
        (_state_dict_bytes(prefix="encoder."), "no backbone.conv1.weight or conv1.weight"),
    ],
    ids=["random-bytes", "no-resnet-stem"],
)
def test_not_a_state_dict_is_an_input_error(fake_zenodo, monkeypatch, tmp_path, data, problem):
    file = _register(monkeypatch, "junk", data, "junk")
    fake_zenodo.add_file(file, data)
    with pytest.raises(InputError, match=problem) as info:
        fetch("junk", tmp_path, base_url=fake_zenodo.files_base, **FAST)
    assert info.value.path == str(tmp_path / file)
    assert os.listdir(tmp_path) == []


def test_plain_imagenet_state_dict_is_accepted(fake_zenodo, monkeypatch, tmp_path):
    data = _state_dict_bytes(prefix="")
    file = _register(monkeypatch, "tiny_imagenet", data, "tiny_imagenet")
    fake_zenodo.add_file(file, data)
    assert fetch("tiny_imagenet", tmp_path, base_url=fake_zenodo.files_base, **FAST).name == file


def test_unknown_name_lists_the_known_ones(tmp_path):
    with pytest.raises(WeightsError, match=r"'nope'.*deeplabv3_resnet101_coco"):
        fetch("nope", tmp_path)


def test_inconsistent_table_entry_is_refused(monkeypatch, tmp_path):
    monkeypatch.setitem(weights.KNOWN, "odd", {"url": "x", "sha256_prefix": "586e9e4e", "file": "a-12345678.pth"})
    with pytest.raises(WeightsError, match="different hash"):
        fetch("odd", tmp_path)


def test_command_line(server, tmp_path, capsys):
    assert weights.main([]) == 0
    assert "deeplabv3_resnet101_coco-586e9e4e.pth" in capsys.readouterr().out
    assert weights.main(["tiny_coco", "--dest", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / server.file)
    assert weights.main(["nope", "--dest", str(tmp_path)]) == 1
    assert "unknown weights" in capsys.readouterr().err
