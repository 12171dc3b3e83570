"""Download pretrained backbone weights (torchvision state dicts), verified by sha256.

The papers' encoder is torchvision's DeepLabV3-ResNet101 with COCO weights. torchvision
names its files ``<name>-<h>.pth`` where ``<h>`` is the first 8 hex digits of the
file's sha256 (what its own ``check_hash`` verifies); :data:`KNOWN` records that
prefix, and the full sha256 where an entry gives one (``"sha256"``).

:func:`fetch` hands the transfer to :func:`fsmis.data.download.fetch_verified`
(resumed ``<file>.part``, transient failures retried with back-off, one fresh download
after a wrong sha256, sidecar ``<file>.sha256`` in ``sha256sum`` format; a rerun that
finds the file and a matching sidecar downloads and reads nothing). What is specific
to weights is here: the table, and that verified bytes are loaded once with
``torch.load(weights_only=True)`` to make sure they are a state dict with a ResNet stem
(``backbone.conv1.weight`` or ``conv1.weight``) before they are kept.

The download folder defaults to the entry's URL; ``base_url`` or ``$FSMIS_WEIGHTS_URL``
(a folder URL; the file name is appended) point elsewhere, for tests and offline
mirrors. When the host cannot be reached at all (name resolution, no route) the error
says "offline?" at once and where the workflow takes the file placed by hand:
``<dest_dir>/<name>.pth`` (``fsmis.paths`` "weights", e.g.
``resources/weights/deeplabv3_resnet101_coco.pth``), see :func:`by_hand`.

Command line: ``python -m fsmis.data.weights NAME --dest DIR`` (no NAME: list them).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from fsmis import paths
from fsmis.data.download import ChecksumError, DownloadError, Transfer, fetch_verified, plain_name
from fsmis.envvars import FSMIS_WEIGHTS_URL
from fsmis.errors import InputError

__all__ = ["KNOWN", "WeightsError", "WeightsChecksumError", "by_hand", "fetch", "file_name",
           "check_state_dict", "main"]

_TORCHVISION = "https://download.pytorch.org/models"

#: name -> {"url", "sha256_prefix", "file"[, "sha256"]}; ``file`` is the last part of ``url``
KNOWN: dict[str, dict[str, str]] = {
    "deeplabv3_resnet101_coco": {
        "url": f"{_TORCHVISION}/deeplabv3_resnet101_coco-586e9e4e.pth",
        "sha256_prefix": "586e9e4e",
        "file": "deeplabv3_resnet101_coco-586e9e4e.pth",
    },
    "resnet101_imagenet": {  # torchvision ResNet101_Weights.IMAGENET1K_V1
        "url": f"{_TORCHVISION}/resnet101-63fe2227.pth",
        "sha256_prefix": "63fe2227",
        "file": "resnet101-63fe2227.pth",
    },
    "resnet50_imagenet": {  # torchvision ResNet50_Weights.IMAGENET1K_V1
        "url": f"{_TORCHVISION}/resnet50-0676ba61.pth",
        "sha256_prefix": "0676ba61",
        "file": "resnet50-0676ba61.pth",
    },
}

#: a state dict must hold one of these to be a ResNet we can load
STEM_KEYS = ("backbone.conv1.weight", "conv1.weight")

_HASH_SUFFIX = re.compile(r"-([0-9a-f]{8,64})\.[^.]+$")

_log = logging.getLogger(__name__)


class WeightsError(DownloadError):
    """Weights could not be fetched: unknown name, not found, or failed after the retries."""


class WeightsChecksumError(ChecksumError):
    """The downloaded bytes do not have the sha256 the table states."""


def _entry(name: str) -> dict[str, str]:
    try:
        entry = KNOWN[name]
    except KeyError:
        raise WeightsError(f"unknown weights {name!r}; known: {', '.join(sorted(KNOWN))}") from None
    file = entry["file"]
    if not plain_name(file):
        raise WeightsError(f"weights {name!r}: refusing file name {file!r}")
    prefix = entry["sha256_prefix"].lower()
    full = entry.get("sha256", "").lower()
    if len(prefix) < 8 or not re.fullmatch(r"[0-9a-f]+", prefix) or (full and not full.startswith(prefix)):
        raise WeightsError(f"weights {name!r}: bad sha256 in the table ({prefix!r}, {full!r})")
    m = _HASH_SUFFIX.search(file)
    if m and not (m.group(1).startswith(prefix) or prefix.startswith(m.group(1))):
        raise WeightsError(f"weights {name!r}: file name {file!r} carries a different hash than {prefix}")
    return entry


def file_name(name: str) -> str:
    """File name of weights ``name`` (what :func:`fetch` writes into ``dest_dir``)."""
    return _entry(name)["file"]


def url_of(name: str, base_url: str | None = None) -> str:
    """Download URL of weights ``name``: ``base_url`` / ``$FSMIS_WEIGHTS_URL`` + file, or the table's."""
    entry = _entry(name)
    base = base_url or os.environ.get(FSMIS_WEIGHTS_URL)
    if base:
        return f"{base.rstrip('/')}/{urllib.parse.quote(entry['file'])}"
    return entry["url"]


def by_hand(name: str, dest_dir, base_url: str | None = None) -> str:
    """How to put weights ``name`` in place without network (the end of an offline error):
    the workflow's file for them is ``<dest_dir>/<name>.pth`` (``fsmis.paths`` "weights")."""
    entry = _entry(name)
    place = Path(dest_dir) / Path(paths.fill("weights", weights=name)).name
    return (f"Place it by hand: fetch {url_of(name, base_url)} on a machine with network and put it at {place} "
            f"(its sha256 starts with {entry['sha256_prefix']}), which the workflow then uses without downloading "
            f"(docs/data.md, \"Offline: files placed by hand\").")


def check_state_dict(path, report_as=None) -> None:
    """Raise InputError unless ``path`` loads (weights only) as a ResNet state dict."""
    import torch  # deferred: listing and --help need no torch

    shown = report_as or path
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a bad file
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise InputError(shown, f"not a loadable PyTorch state dict ({type(err).__name__}: {detail})") from None
    if not isinstance(state, Mapping):
        raise InputError(shown, f"holds a {type(state).__name__}, not a state dict")
    if not any(key in state for key in STEM_KEYS):
        first = ", ".join(map(str, list(state)[:5])) or "(empty)"
        raise InputError(
            shown, f"state dict has no {' or '.join(STEM_KEYS)} (not a ResNet backbone?); first keys: {first}"
        )


def fetch(name: str, dest_dir, base_url: str | None = None, **transfer) -> Path:
    """Download weights ``name`` (a key of :data:`KNOWN`) into ``dest_dir``; return the file.

    Verified by sha256 (the full digest where the table has one, else the prefix) and
    loaded once as a state dict; a rerun that finds the file and its ``.sha256`` sidecar
    does nothing. Raises :class:`WeightsChecksumError` (nothing left on disk) when the
    bytes are wrong after the retries, :class:`~fsmis.errors.InputError` when they are
    not a ResNet state dict (deleted too), and :class:`WeightsError` when the download
    fails. ``transfer``: the keywords of :class:`fsmis.data.download.Transfer`.
    """
    entry = _entry(name)
    transfer = {"by_hand": by_hand(name, dest_dir, base_url), **transfer}
    return fetch_verified(
        url_of(name, base_url), dest_dir, entry["file"], entry.get("sha256") or entry["sha256_prefix"],
        "sha256", int(entry["size"]) if entry.get("size") else None,
        check=lambda path, final: check_state_dict(path, report_as=final),
        transfer=Transfer.of(transfer, _log), error=WeightsError, checksum_error=WeightsChecksumError,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download verified pretrained backbone weights.")
    parser.add_argument("name", nargs="?", help=f"one of: {', '.join(KNOWN)} (none: list them)")
    parser.add_argument("--dest", default=".", help="target folder (default: .)")
    parser.add_argument("--base-url", default=None, help=f"folder URL to fetch from (default: ${FSMIS_WEIGHTS_URL} "
                        "or the table's URL)")
    parser.add_argument("--retries", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not args.name:
        for key, entry in KNOWN.items():
            print(f"{key}\t{entry['file']}\t{entry['sha256_prefix']}\t{url_of(key, args.base_url)}")
        return 0
    try:
        print(fetch(args.name, args.dest, args.base_url, retries=args.retries))
    except (DownloadError, InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
