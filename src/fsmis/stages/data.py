"""The data stages, from the sources to the folds: ``generate`` (a generated dataset),
``fetch_weights``, ``download`` and ``unpack`` (fetch), ``inventory`` (which cases are
usable), ``canonical`` and ``case_table``, ``preprocess``, ``classmap``,
``superpixels`` and ``splits``. One function per workflow rule (see
:mod:`fsmis.stages`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from fsmis import io
from fsmis.contracts import ClassMap, Splits
from fsmis.stages.jobs import job, read_array

log = logging.getLogger(__name__)


# -- fetch ---------------------------------------------------------------------------

def generate(dataset: dict, out_dir: str, cases: list[str], tracking: dict) -> None:
    """Write a generated dataset (source kind ``generated``, e.g. the phantom) into
    ``out_dir`` with its adapter's ``generate``: ``{case}_image/_label.nii.gz``."""
    from fsmis.data import adapters

    name = dataset["name"]
    t0 = time.perf_counter()
    with job("fetch", tracking, {"dataset": dataset}) as run:
        written = adapters.get(name).generate(dataset, out_dir, list(cases))
        if list(written) != list(cases):
            raise RuntimeError(f"{name} wrote cases {written}, workflow expected {cases}")
        run.log_metrics({"n_cases": len(written), "seconds": time.perf_counter() - t0})
        log.info("generated %d %s cases in %s (%.1f s)", len(written), name, out_dir, time.perf_counter() - t0)


def fetch_weights(name: str, out: str, tracking: dict) -> None:
    """Download a known pretrained weight file (``fsmis.data.weights``) to ``out``."""
    import os

    from fsmis.data import weights

    with job("fetch_weights", tracking, {"weights": name}) as run:
        t0 = time.perf_counter()
        path = weights.fetch(name, Path(out).parent)
        if path.resolve() != Path(out).resolve():
            os.replace(path, out)  # the rule names the file by its key, not the URL's name
        run.log_metrics({"bytes": Path(out).stat().st_size, "seconds": time.perf_counter() - t0})


def download(record: str, name: str, out: str, tracking: dict) -> None:
    """Download file ``name`` of Zenodo record ``record`` to ``out`` (resumed, retried,
    verified by size and md5; see ``fsmis.data.zenodo``)."""
    from fsmis.data import zenodo

    with job("download", tracking, {"record": record, "file": name}) as run:
        t0 = time.perf_counter()
        path = zenodo.download(record, name, Path(out).parent)
        run.log_metrics({"bytes": path.stat().st_size, "seconds": time.perf_counter() - t0})


def unpack(archive: str, out_dir: str, tracking: dict) -> None:
    """Unpack a verified archive into ``out_dir``; no member may land outside it
    (``fsmis.data.archives``)."""
    from fsmis.data import archives

    with job("unpack", tracking, {"archive": Path(archive).name}) as run:
        t0 = time.perf_counter()
        files = archives.extract(archive, out_dir)
        run.log_metrics({"files": len(files), "seconds": time.perf_counter() - t0})
        log.info("%s: %d files -> %s", archive, len(files), out_dir)


# -- cases ---------------------------------------------------------------------------

def inventory(dataset: dict, raw_dir: str, cases: list[str], out: str, tracking: dict, n_folds: int = 2) -> None:
    """Which requested cases are usable, for datasets where that is only known after
    unpacking (``fsmis.data.adapters.inventory``): ``out`` lists every requested case
    with ``usable`` 1/0 and the reason a case is skipped; skipped cases are named in
    the log. Stops when the usable cases cannot fill ``n_folds`` folds
    (``fsmis.data.splits.infeasible``), before any per-case job runs."""
    import pandas as pd

    from fsmis.data import adapters
    from fsmis.data.splits import infeasible
    from fsmis.errors import InputError

    with job("inventory", tracking, {"dataset": dataset}) as run:
        verdict = adapters.inventory(dataset, raw_dir, cases)
        skipped = {c: r for c, r in verdict.items() if r}
        usable = len(verdict) - len(skipped)
        problem = infeasible(usable, int(n_folds))
        if problem:
            raise InputError(raw_dir, f"only {usable} of the {len(verdict)} requested cases are usable "
                                      f"(skipped: {list(skipped)[:10]}): {problem}; choose others with "
                                      f"dataset.cases")
        io.write_tsv(pd.DataFrame({"case": list(verdict), "usable": [int(r is None) for r in verdict.values()],
                                   "reason": [r or "" for r in verdict.values()]}), out)
        run.log_metrics({"requested": len(verdict), "usable": usable, "skipped": len(skipped)})
        if skipped:
            log.warning("skipping %d of %d requested case(s): %s", len(skipped), len(verdict),
                        "; ".join(f"{c} ({r})" for c, r in skipped.items()))
        log.info("inventory: %d usable case(s) -> %s", usable, out)


def canonical(dataset: dict, raw_dir: str, out_dir: str, cases: list[str], cases_tsv: str, tracking: dict) -> None:
    """Validated canonical pairs of ``cases`` (the workflow runs one job per case) and
    their rows of ``cases.tsv``. The pairs come from the dataset's adapter
    (``fsmis.data.adapters``), which may convert (CHAOS DICOM + PNG) into a work folder
    that is removed afterwards."""
    import shutil
    import tempfile

    from fsmis.data import adapters
    from fsmis.data import canonical as canonical_conversion

    facts = adapters.facts(dataset)
    t0 = time.perf_counter()
    with job("canonical", tracking, {"dataset": dataset}) as run:
        work = Path(tempfile.mkdtemp(prefix=".work-", dir=Path(out_dir).parent))
        try:
            pairs = adapters.get(dataset["name"]).pairs(dataset, raw_dir, work, cases)
            claims = adapters.modality_claims(dataset, cases)
            table = canonical_conversion.build(
                pairs, out_dir, facts["label_map"], {c: m for c, (m, _, _) in claims.items()},
                claims={c: where for c, (_, where, own) in claims.items() if not own})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        io.write_tsv(table, cases_tsv)
        run.log_metrics({
            "n_cases": len(table),
            "spacing_z_min": float(table["spacing_z"].min()), "spacing_z_max": float(table["spacing_z"].max()),
            "spacing_xy_min": float(table["spacing_x"].min()), "spacing_xy_max": float(table["spacing_x"].max()),
            "seconds": time.perf_counter() - t0,
        })
        log.info("canonical: %d case(s) -> %s", len(table), out_dir)


def case_table(rows: list[str], out: str) -> None:
    """``cases.tsv``: the per-case rows of the canonical step, in the given order (joined
    as text, so every value is kept exactly as the canonical job wrote it)."""
    from fsmis.data import canonical as canonical_conversion
    from fsmis.errors import InputError

    header, lines = None, []
    for path in rows:
        head, *body = Path(path).read_text(encoding="utf-8").splitlines()
        if header is not None and head != header:
            raise InputError(path, f"columns differ from {rows[0]}: {head!r} vs {header!r}")
        header = head
        lines += [line for line in body if line]
    canonical_conversion.check_case_ids([line.split("\t", 1)[0] for line in lines])
    with io.atomic_path(out) as tmp:
        tmp.write_text("\n".join([header or "", *lines]) + "\n", encoding="utf-8")
    log.info("cases.tsv: %d cases -> %s", len(lines), out)


# -- per-case volumes ----------------------------------------------------------------

def preprocess(case: str, modality: str, params: dict, image_in: str, label_in: str, image_out: str,
               label_out: str, tracking: dict) -> None:
    """One case's intensities and grid as ``params`` (the ``preprocess`` config) and its
    modality say (``fsmis.data.preprocess.preprocess_case``)."""
    from fsmis.data import preprocess as preprocessing

    t0 = time.perf_counter()
    with job("preprocess", tracking, {"modality": modality, "preprocess": params}) as run:
        image, label = preprocessing.preprocess_case(io.read_image(image_in), io.read_image(label_in), modality,
                                                     params)
        io.write_image(image, image_out)
        io.write_image(label, label_out)
        sp = image.GetSpacing()
        run.log_metrics({"spacing_x": sp[0], "spacing_y": sp[1], "spacing_z": sp[2], "slices": image.GetSize()[2],
                         "seconds": time.perf_counter() - t0})
        log.info("%s: preprocessed to size %s spacing %s", case, image.GetSize(), tuple(round(s, 3) for s in sp))


def classmap(label_paths: dict, out: str, tracking: dict) -> None:
    """``classmap.json``: the slices of each case that hold each foreground class."""
    from fsmis.data import preprocess as preprocessing
    from fsmis.labels import CLASSES

    with job("classmap", tracking, {"n_cases": len(label_paths)}) as run:
        labels = {case: read_array(p) for case, p in label_paths.items()}
        index = preprocessing.slice_index(labels, {k: v for k, v in CLASSES.items() if k != "background"})
        ClassMap.from_json(index, out).write(out)
        run.log_metrics({f"slices_{k}": sum(len(v) for v in d.values()) for k, d in index.items()})


def superpixels(case: str, modality: str, params: dict, image_in: str, out: str, threads: int, tracking: dict) -> None:
    """The superpixel map of one preprocessed scan, computed by ``threads`` worker
    processes (``fsmis.data.superpixels.compute``)."""
    import SimpleITK as sitk

    from fsmis.data import superpixels as superpixel_maps

    t0 = time.perf_counter()
    with job("superpixels", tracking, {"modality": modality, "superpixels": params}) as run:
        ref = io.read_image(image_in)
        sp = superpixel_maps.compute(sitk.GetArrayFromImage(ref), modality, params, workers=threads)
        img = sitk.GetImageFromArray(sp.astype(np.int32))
        img.CopyInformation(ref)
        io.write_image(img, out)
        summary = superpixel_maps.summary(sp)
        run.log_metrics({**{k: float(v) for k, v in summary.items()}, "seconds": time.perf_counter() - t0})
        log.info("%s: superpixels %s in %.1f s", case, summary, time.perf_counter() - t0)


def supervoxels(case: str, params: dict, image_in: str, out: str, tracking: dict) -> None:
    """The 3D supervoxel map of one preprocessed scan, the ADNet lineage's pseudo-labels
    (``fsmis.data.supervoxels.supervoxels_3d``)."""
    import SimpleITK as sitk

    from fsmis.data import supervoxels as supervoxel_maps

    t0 = time.perf_counter()
    with job("supervoxels", tracking, {"supervoxels": params}) as run:
        ref = io.read_image(image_in)
        sx, sy, sz = ref.GetSpacing()
        sv = supervoxel_maps.supervoxels_3d(sitk.GetArrayFromImage(ref), (sz, sy, sx), **params)
        img = sitk.GetImageFromArray(sv.astype(np.int32))
        img.CopyInformation(ref)
        io.write_image(img, out)
        summary = supervoxel_maps.summary(sv)
        run.log_metrics({**{k: float(v) for k, v in summary.items()}, "seconds": time.perf_counter() - t0})
        log.info("%s: supervoxels %s in %.1f s", case, summary, time.perf_counter() - t0)


# -- folds ---------------------------------------------------------------------------

def splits(cases_tsv: str, n_folds: int, out: str, tracking: dict, lineage: str = "ssl_alpnet",
           supp_idx: int = 2) -> None:
    """``splits.json``: the cases of ``cases.tsv`` dealt into ``n_folds`` folds, as the
    code lineage ``lineage`` deals them (``splits.lineage``; ``fsmis.data.lineage_folds``:
    SSL-ALPNet's partition, the ADNet lineage's overlapping sets with the support at
    ``supp_idx`` of the test fold, or RPT-fixed's partition)."""
    import pandas as pd

    from fsmis.data.lineage_folds import lineage_folds

    with job("splits", tracking, {"n_folds": n_folds, "lineage": lineage, "supp_idx": supp_idx}) as run:
        cases = pd.read_csv(cases_tsv, sep="\t")["case"].astype(str).tolist()
        folds = lineage_folds(lineage, cases, n_folds, supp_idx)
        if lineage != "ssl_alpnet":
            folds = {**folds, "lineage": lineage, "supp_idx": int(supp_idx) if lineage == "adnet" else None}
        Splits.from_json(folds, out).write(out)
        run.log_metrics({"n_cases": len(cases), "n_folds": n_folds})
        run.log_artifact(out)
