"""Folds and setting-2 slice exclusion of the ADNet lineage (ADNet, Q-Net, CAT-Net,
RPT, GMRD) and of RPT-fixed, the RPT author's corrected fork.

Folds, reference (``dataset_specifics.get_folds`` with ``TestDataset``/``TrainDataset``;
the same in sha168/ADNet, ZJLAB-AMMI/Q-Net, YazhouZhu19/RPT, hust-linyi/CAT-Net and
zmcheng9/GMRD). The cases are indexed in the numeric order of their file ids and each
fold is a hand-written *set* of indices:

- CMR (35 cases): {0..7}, {7..14}, {14..21}, {21..28}, {28..34, 0}
- CHAOST2 (20): {0..4}, {4..8}, {8..12}, {12..16}, {16..19, 0}
- SABS (30, Q-Net onwards): {0..6}, {6..12}, {12..18}, {18..24}, {24..29, 0}

The rule behind the three: cut the cases into ``n_folds`` contiguous blocks of
``n / n_folds``; fold k's set is block k plus the first case of block k+1, the last
fold wrapping to case 0. That is SSL-ALPNet's test block plus SSL-ALPNet's support
scan (:func:`fsmis.data.splits.make_folds`); :func:`adnet_fold_sets` implements it for
any case count, with ``make_folds``'s blocks where ``n_folds`` does not divide ``n``
(remainders to the first blocks; the reference has no such dataset). At test time the
fold's files are kept in index order (so fold 4 starts with case 0), the
``supp_idx``-th is popped as the support (Python indexing: negative counts from the
end) and the rest are queried; training uses every case outside the set. Q-Net and
its successors' published test scripts use ``supp_idx = 2`` (``ALL_SUPP=(2)``; Q-Net's
config default is 0). Consequences, kept on purpose under ``lineage: adnet``: the
fold's overlap scans (CHAOS: 1, 8, 19, 31, 36) are queried twice, the supports (CHAOS
with ``supp_idx = 2``: 3, 13, 21, 33, 37) are never queried, and the support is a scan
of the test fold. ADNet itself (``dataloading/datasets.py``) takes the last file,
``supp_idx = -1``: folds 0..n-2 are then SSL-ALPNet's (the support is the overlap
scan), while the last fold, whose files in index order are case 0 then its block,
tests case 0 a second time and takes the block's last case as support, which is never
queried.

Folds, RPT-fixed (``get_folds`` returns the same ranges as ordered lists whose last
entry is a dedicated support; ``supp_idx`` must be -1): the queries are the blocks, a
partition of the cases, the support is the first case of the next block, training
drops both. That is exactly ``make_folds``, which :func:`adnet_fixed_folds` returns.

Setting 2, reference (``TrainDataset.__getitem__``): on the training scan's
ground-truth label volume (not the supervoxels), a slice is excluded when it holds
every label of ``EXCLUDE_LABEL`` (an AND over ``sum(gt == l) > 0`` starting from all
True); the excluded slices are removed from the slices of the sampled supervoxel, so
neither the support nor the query is one. The setting-2 scripts pass all test labels
(CHAOS [1, 2, 3, 4], SABS [1, 2, 3, 6]) and train one model per fold.
:func:`exclude_all`. RPT-fixed (``get_excluded_slice_indices``): a slice holding
*any* of the labels, same labels, same single model: :func:`exclude_any`. An empty
label list excludes nothing in both functions; the reference's AND over no label
would exclude every slice (a degenerate configuration nobody runs). In
:mod:`fsmis.settings`, ``2all`` is the reference's rule (the intersection of the test
classes' slices in ``classmap.json``, one model per fold); RPT-fixed's rule is the
union that ``2`` takes, but over all test classes with one model per fold, where
``2`` trains one model per label group on its group's union.

Standard library only at import (the workflow may check a configuration with it);
the exclusion functions import NumPy when called.
"""

from __future__ import annotations

from collections import Counter

from fsmis.data.splits import infeasible, make_folds, natural_key

LINEAGES = ("ssl_alpnet", "adnet", "adnet_fixed")
DEFAULT_SUPP_IDX = 2  # the lineage's published test scripts (ALL_SUPP=(2))


def _blocks(n_cases: int, n_folds: int) -> list[int]:
    """Block boundaries ``sep[0..n_folds]`` of ``make_folds`` (remainders to the first blocks)."""
    return [k * (n_cases // n_folds) + min(k, n_cases % n_folds) for k in range(n_folds + 1)]


def adnet_fold_sets(n_cases: int, n_folds: int) -> list[list[int]]:
    """The reference's fold index sets for ``n_cases`` cases, each in index order:
    block k plus the first index of block k+1 (index 0 for the last fold)."""
    sep = _blocks(n_cases, n_folds)
    return [sorted({*range(sep[k], sep[k + 1]), sep[k + 1] % n_cases}) for k in range(n_folds)]


def adnet_infeasible(n_cases: int, n_folds: int, supp_idx: int = DEFAULT_SUPP_IDX) -> str | None:
    """None when the reference's folds exist for these numbers, else why not. A fold's
    set is a test block plus one scan, so the case counts that work are those of
    :func:`fsmis.data.splits.infeasible`; ``supp_idx`` must index the smallest set."""
    problem = infeasible(n_cases, n_folds)
    if problem:
        return problem
    smallest = n_cases // n_folds + 1
    if not -smallest <= int(supp_idx) < smallest:
        return (f"supp_idx={supp_idx} is outside the smallest fold of {smallest} scans "
                f"(use {-smallest}..{smallest - 1})")
    return None


def _ordered(cases) -> list[str]:
    ordered = sorted((str(c) for c in cases), key=natural_key)
    dupes = sorted((c for c, k in Counter(ordered).items() if k > 1), key=natural_key)
    if dupes:
        raise ValueError(f"duplicate case ids: {dupes}")
    return ordered


def adnet_folds(cases, n_folds: int = 5, supp_idx: int = DEFAULT_SUPP_IDX) -> dict:
    """The reference's overlapping folds as ``splits.json``: ``test`` = the fold's
    files in index order without the support, ``support`` = its ``supp_idx``-th file,
    ``train`` = every case outside the fold's set."""
    ordered = _ordered(cases)
    problem = adnet_infeasible(len(ordered), n_folds, supp_idx)
    if problem:
        raise ValueError(problem)
    folds = []
    for k, members in enumerate(adnet_fold_sets(len(ordered), n_folds)):
        files = [ordered[i] for i in members]
        support = files.pop(int(supp_idx))
        train = [c for i, c in enumerate(ordered) if i not in members]
        folds.append({"fold": k, "test": files, "support": support, "train": train})
    return {"n_folds": n_folds, "folds": folds}


def adnet_fixed_folds(cases, n_folds: int = 5) -> dict:
    """RPT-fixed's partition: every case queried once, the first case of the next
    block as a dedicated support; the same folds as SSL-ALPNet's ``make_folds``."""
    return make_folds(cases, n_folds)


def lineage_folds(lineage: str, cases, n_folds: int, supp_idx: int = DEFAULT_SUPP_IDX) -> dict:
    """``splits.json`` content of ``splits.lineage`` (``supp_idx`` is used by ``adnet`` only)."""
    if lineage == "adnet":
        return adnet_folds(cases, n_folds, supp_idx)
    if lineage in ("ssl_alpnet", "adnet_fixed"):
        return make_folds(cases, n_folds)
    raise ValueError(f"unknown fold lineage {lineage!r}; known: {', '.join(LINEAGES)}")


def lineage_infeasible(lineage: str, n_cases: int, n_folds: int, supp_idx: int = DEFAULT_SUPP_IDX) -> str | None:
    if lineage == "adnet":
        return adnet_infeasible(n_cases, n_folds, supp_idx)
    if lineage in ("ssl_alpnet", "adnet_fixed"):
        return infeasible(n_cases, n_folds)
    raise ValueError(f"unknown fold lineage {lineage!r}; known: {', '.join(LINEAGES)}")


def _holds(labels, exclude_labels):
    """``[len(labels), Z]`` bool: slice z holds label l, for each excluded label."""
    import numpy as np

    vol = np.asarray(labels)
    flat = vol.reshape(vol.shape[0], -1)
    return np.stack([(flat == lab).any(axis=1) for lab in exclude_labels]) if len(exclude_labels) else None


def exclude_all(labels, exclude_labels) -> list[int]:
    """Reference setting 2: slices of the ``(z, y, x)`` label volume that hold every
    label of ``exclude_labels``; none for None or an empty list."""
    holds = _holds(labels, list(exclude_labels or []))
    return [] if holds is None else [int(z) for z in holds.all(axis=0).nonzero()[0]]


def exclude_any(labels, exclude_labels) -> list[int]:
    """RPT-fixed setting 2: slices that hold any label of ``exclude_labels``."""
    holds = _holds(labels, list(exclude_labels or []))
    return [] if holds is None else [int(z) for z in holds.any(axis=0).nonzero()[0]]
