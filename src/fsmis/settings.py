"""Experimental settings: which training slices a model may see, and how many models a
fold needs (docs/design.md, 'Settings'; docs/datasets.md, 'Setting 2: two definitions'
for the two lineages).

- ``1`` (Roy et al. 2020): nothing excluded; one model per fold serves every test class.
- ``2`` (SSL-ALPNet, Ouyang et al. TMI 2022): one model per label group; its training
  pool loses every slice that contains **any** class of the group it is tested on
  (SSL-ALPNet ``exclude_cls_list``, e.g. both kidneys when testing kidneys).
- ``2all`` (the ADNet lineage: ADNet, Q-Net, CAT-Net, RPT, ...): one model per fold;
  only slices that contain **all** test classes at once are removed (their
  ``EXCLUDE_LABEL`` with an element-wise AND). Far fewer slices go, so numbers called
  "setting 2" in the two lineages are not comparable; the names here keep them apart.
- ``2any`` (RPT-fixed, the RPT author's corrected fork of the ADNet lineage): one model
  per fold, as ``2all``; its training pool loses every slice that contains **any**
  test class (``np.isin(labels, excluded).any``), the union ``2`` takes per label
  group, taken here over all test classes at once.

Exclusion reads ground-truth labels of the training scans (``classmap.json``), as both
reference lineages do; setting 2 is therefore not strictly annotation-free.

Imports only the standard library: the workflow calls :func:`model_groups` while it
builds the job graph.
"""

from __future__ import annotations

SETTINGS = ("1", "2", "2all", "2any")
ALL = "all"  # the group name of the single model of settings 1 and 2all


def group_name(classes) -> str:
    """Folder name of a label group's model: the class names joined by ``+``."""
    return "+".join(classes)


def model_groups(setting: str, classes: list[str], label_groups: list[list[str]]) -> dict[str, list[str]]:
    """``{group name: test classes of that model}`` for one fold.

    ``classes`` are the dataset's test classes; ``label_groups`` its setting-2 groups
    (restricted here to test classes; a group left empty is dropped)."""
    setting = str(setting)
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; known: {', '.join(SETTINGS)}")
    if setting != "2":
        return {ALL: list(classes)}
    groups = {}
    for group in label_groups:
        members = [c for c in group if c in classes]
        if members:
            groups[group_name(members)] = members
    missing = [c for c in classes if not any(c in g for g in groups.values())]
    if missing:
        raise ValueError(f"setting 2: test classes {missing} belong to no label group {label_groups}")
    return groups


def excluded_slices(setting: str, test_classes: list[str], classmap: dict, cases: list[str]) -> dict[str, set[int]]:
    """Training slices to leave out, ``{case: {z, ...}}``, for a model tested on
    ``test_classes``. ``classmap`` is ``classmap.json``: ``{class: {case: [z, ...]}}``."""
    setting = str(setting)
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; known: {', '.join(SETTINGS)}")
    out: dict[str, set[int]] = {case: set() for case in cases}
    if setting == "1":
        return out
    for case in cases:
        per_class = [set(classmap.get(name, {}).get(case, [])) for name in test_classes]
        if not per_class:
            continue
        if setting in ("2", "2any"):
            out[case] = set().union(*per_class)  # any test class (of the group, or of all for 2any)
        else:
            out[case] = set.intersection(*per_class)  # all test classes at once
    return out
