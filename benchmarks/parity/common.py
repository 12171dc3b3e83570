"""Shared harness of the parity scripts: one of our methods against a checkout of its
reference code, on identical inputs and weights, with the largest differences printed.

Usage of a script built on it (each method's script says what it compares)::

    python benchmarks/parity/adnet.py --reference PATH --reference-libs DIR

``--reference PATH``: a work tree of the reference repository, e.g.
``mkdir -p PATH && git -C <git dir> archive HEAD | tar -x -C PATH``. It is never edited;
what it needs to run here is patched at run time, in this process only (below).
``--reference-libs DIR``: what the reference imports and this project does not
install, in a separate folder so the project's environment stays as it is, e.g.
``pip install --no-deps --target DIR "torchvision==0.28.*"`` (the torchvision built
with torch 2.13; ``0.(x+15).*`` for torch 2.x).

What a script takes from here:

- :func:`parser`: the common options (``--reference``, ``--reference-libs``, ``--seed``,
  ``--size``, ``--tolerance``, ``--threads``).
- :func:`load_torchvision`: imports torchvision from ``--reference-libs``; a wheel whose
  compiled operators belong to another torch build fails while registering their fake
  kernels, which the models never use: those registrations are skipped.
- :func:`import_reference`: imports a module of the checkout with the checkout (and the
  libs folder) on ``sys.path`` only for the import, then files every module it loaded
  from the checkout under a unique prefix (``_ref_<hash>.models...``), so two checkouts
  with the same package names (``models``, ``utils``, ...) do not clash and the
  project's own modules of those names are untouched. A reference that imports one of
  its modules lazily, at call time, would not find it afterwards (none of the lineage
  does).
- run-time shims: :func:`builders_without_downloads` (torchvision builders get
  ``weights=None, weights_backbone=None``: random weights, no download, whatever
  ``pretrained`` the reference passes), :func:`cuda_as_cpu` (``.cuda()`` and
  ``.to('cuda')`` stay on the CPU) with :func:`retarget_devices` (a model's
  ``torch.device('cuda')`` attributes become the CPU), :func:`stub_missing_loads` (a
  ``torch.load`` of a path that does not exist, e.g. an absolute weights path of the
  authors' machine, returns a stand-in state dict).
- :func:`episode`: seeded random images and elliptic masks, the same for both models.
- :func:`copy_state`: our state dict into the reference model through a key map;
  fails unless every tensor of ours lands on a tensor of the same shape and every
  tensor of the reference is filled, except those named unused (with the reason).
- :class:`Report`: one line per compared quantity (outputs, each loss, all gradients
  together): the largest absolute difference, the relative one (that difference over
  the largest magnitude of the reference's values, per tensor, worst tensor named)
  and PASS/FAIL at ``--tolerance`` (1e-4); ``finish`` prints the verdict.
- :func:`alternate`: times several callables round-robin in one process (wall and CPU time).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import inspect
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

TOLERANCE = 1e-4


def parser(description: str, reference_required: bool = True) -> argparse.ArgumentParser:
    """The options every parity script has (``--reference`` optional for a script with
    a mode that needs no reference, which then checks it itself)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--reference", required=reference_required, help="work tree of the reference repository")
    p.add_argument("--reference-libs", default=None,
                   help="folder with the reference's extra dependencies (pip install --no-deps --target DIR ...)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--tolerance", type=float, default=TOLERANCE, help="largest relative difference that passes")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return p


# -- imports ---------------------------------------------------------------------------------

@contextlib.contextmanager
def on_path(*folders: str | Path | None):
    """``folders`` (``None`` skipped) first on ``sys.path`` inside the block only."""
    added = [str(Path(f).resolve()) for f in folders if f]
    sys.path[:0] = added
    try:
        yield
    finally:
        for f in added:
            sys.path.remove(f)


@contextlib.contextmanager
def _tolerant_fake_registrations():
    import torch.library as library

    plain = library.register_fake

    def tolerant(op, *a, **k):
        register = plain(op, *a, **k)

        def decorate(fn):
            try:
                return register(fn)
            except RuntimeError:  # the operator is not in this torch build
                return fn
        return decorate

    library.register_fake = tolerant
    try:
        yield
    finally:
        library.register_fake = plain


def import_torchvision():
    """torchvision from ``sys.path``, or None when it is not installed. A wheel whose
    compiled operators belong to another torch build fails while registering their
    fake kernels; it is imported again with those registrations skipped (the
    references' models need none of them)."""
    try:
        import torchvision
    except ImportError:
        return None
    except RuntimeError:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        with _tolerant_fake_registrations():
            import torchvision
    return torchvision


def load_torchvision(libs: str | Path | None):
    """torchvision, from ``libs`` if given (see the module docstring)."""
    with on_path(libs):
        torchvision = import_torchvision()
    if torchvision is None:
        raise SystemExit("the reference needs torchvision, which this project does not install: "
                         "pip install --no-deps --target DIR \"torchvision==0.28.*\" (the release built with "
                         "torch 2.13) and pass --reference-libs DIR")
    return torchvision


def _top_names(root: Path) -> set[str]:
    """Top-level module and package names of a checkout."""
    packages = {p.name for p in root.iterdir() if p.is_dir() and p.name.isidentifier()}
    return packages | {p.stem for p in root.glob("*.py")}


def import_reference(checkout: str | Path, module: str, libs: str | Path | None = None, alias: str | None = None):
    """Module ``module`` (e.g. ``"models.fewshot_anom"``) of the checkout, imported with
    the checkout and ``libs`` on ``sys.path`` for the import only; the modules of the
    checkout are kept in ``sys.modules`` under ``alias`` (default ``_ref_<hash of the
    path>``) instead of their own names, which are restored to what they were."""
    root = Path(checkout).resolve()
    if not root.is_dir():
        raise SystemExit(f"--reference {checkout}: not a folder")
    alias = alias or "_ref_" + hashlib.sha1(str(root).encode()).hexdigest()[:8]
    tops = _top_names(root)

    def ours(name):
        return name.split(".")[0] in tops

    hidden = {k: sys.modules.pop(k) for k in [k for k in sys.modules if ours(k)]}
    try:
        with on_path(root, libs):
            loaded = importlib.import_module(module)
    finally:
        for k in [k for k in sys.modules if ours(k)]:
            sys.modules[f"{alias}.{k}"] = sys.modules.pop(k)
        sys.modules.update(hidden)
    return loaded


# -- run-time shims ----------------------------------------------------------------------------

@contextlib.contextmanager
def builders_without_downloads(namespace, names: Iterable[str]):
    """Inside the block, ``namespace.<name>(...)`` (e.g. torchvision's
    ``models.segmentation.deeplabv3_resnet101``) builds random weights: ``pretrained``
    is dropped and ``weights``/``weights_backbone`` are set to ``None``."""
    saved = {n: getattr(namespace, n) for n in names}

    def wrap(builder):
        accepted = inspect.signature(builder).parameters

        def build(*args, **kwargs):
            kwargs.pop("pretrained", None)
            kwargs.pop("pretrained_backbone", None)
            for key in ("weights", "weights_backbone"):
                if key in accepted:
                    kwargs[key] = None
            return builder(*args, **kwargs)
        return build

    for n, b in saved.items():
        setattr(namespace, n, wrap(b))
    try:
        yield
    finally:
        for n, b in saved.items():
            setattr(namespace, n, b)


def _cpu_if_cuda(x):
    if isinstance(x, torch.device) and x.type == "cuda" or isinstance(x, str) and x.startswith("cuda"):
        return torch.device("cpu")
    return x


@contextlib.contextmanager
def cuda_as_cpu(active: bool = True):
    """Inside the block (when ``active``): ``Tensor.cuda``/``Module.cuda`` return the
    object as it is, ``Tensor.to``/``Module.to`` with a CUDA device go to the CPU."""
    if not active:
        yield
        return
    saved = (torch.Tensor.cuda, nn.Module.cuda, torch.Tensor.to, nn.Module.to)
    tensor_to, module_to = saved[2], saved[3]

    def tensor_moved(self, *args, **kwargs):
        args = tuple(_cpu_if_cuda(a) for a in args)
        if "device" in kwargs:
            kwargs["device"] = _cpu_if_cuda(kwargs["device"])
        return tensor_to(self, *args, **kwargs)

    def module_moved(self, *args, **kwargs):
        args = tuple(_cpu_if_cuda(a) for a in args)
        if "device" in kwargs:
            kwargs["device"] = _cpu_if_cuda(kwargs["device"])
        return module_to(self, *args, **kwargs)

    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.to, nn.Module.to = tensor_moved, module_moved
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda, torch.Tensor.to, nn.Module.to = saved


def retarget_devices(model: nn.Module, device: torch.device | str) -> list[str]:
    """Every ``torch.device`` attribute of ``model``'s modules that names another device
    type (the reference's ``self.device = torch.device('cuda')``) set to ``device``;
    returns the attributes changed (``module.attr``)."""
    device = torch.device(device)
    changed = []
    for name, m in model.named_modules():
        for attr, value in list(vars(m).items()):
            if isinstance(value, torch.device) and value.type != device.type:
                setattr(m, attr, device)
                changed.append(f"{name or type(model).__name__}.{attr}")
    return changed


@contextlib.contextmanager
def stub_missing_loads(stand_in: Callable[[str], object]):
    """Inside the block, ``torch.load`` of a path that does not exist returns
    ``stand_in(path)`` (e.g. an empty or a random state dict for an absolute weights
    path of the authors' machine); every other load is left as it is."""
    plain = torch.load

    def load(f, *args, **kwargs):
        if isinstance(f, (str, Path)) and not Path(f).exists():
            return stand_in(str(f))
        return plain(f, *args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = plain


# -- inputs and weights ------------------------------------------------------------------------

def ellipse(size: int, cy: float, cx: float, ry: float, rx: float) -> torch.Tensor:
    """``[1, size, size]`` float mask of an axis-aligned ellipse."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    return ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1).float()[None]


def episode(size: int, seed: int, n_query: int = 1) -> dict:
    """Seeded random images (``sup_img [1,3,S,S]``, ``qry_img [n_query,3,S,S]``), an
    organ-sized elliptic support mask ``sup_fg [1,S,S]`` and a shifted one as the query
    label ``qry_label [n_query,S,S]``."""
    g = torch.Generator().manual_seed(seed)
    c, r = size / 2, size / 6
    return {"sup_img": torch.randn(1, 3, size, size, generator=g),
            "qry_img": torch.randn(n_query, 3, size, size, generator=g),
            "sup_fg": ellipse(size, c, c, 1.3 * r, r),
            "qry_label": ellipse(size, c + size / 16, c - size / 16, 1.3 * r, r).expand(n_query, -1, -1).clone()}


def copy_state(source: Mapping[str, torch.Tensor], target: nn.Module, key_map: Callable[[str], str | None],
               unused: Mapping[str, str] | None = None) -> list[str]:
    """Load ``source`` into ``target`` with ``key_map(source key) -> target key``.

    Fails (``RuntimeError``) unless every source tensor maps to a distinct target tensor
    of the same shape and every target tensor is filled, except those whose key starts
    with a prefix of ``unused`` (``{prefix: reason}``). Returns those unfilled keys."""
    unused = dict(unused or {})
    wanted = target.state_dict()
    mapped, problems = {}, []
    for k, v in source.items():
        t = key_map(k)
        if t is None or t not in wanted:
            problems.append(f"ours {k} -> {t}: no such reference tensor")
        elif t in mapped:
            problems.append(f"ours {k} -> {t}: already filled")
        elif tuple(wanted[t].shape) != tuple(v.shape):
            problems.append(f"ours {k} -> {t}: shape {tuple(v.shape)} != {tuple(wanted[t].shape)}")
        else:
            mapped[t] = v
    left = [k for k in wanted if k not in mapped]
    problems += [f"reference {k}: not filled" for k in left if not k.startswith(tuple(unused))]
    if problems:
        raise RuntimeError(f"weight copy: {len(problems)} problem(s): " + "; ".join(problems[:8]))
    target.load_state_dict(mapped, strict=False)
    after = target.state_dict()
    if any(not torch.equal(after[k], v) for k, v in mapped.items()):
        raise RuntimeError("weight copy: a tensor did not arrive")
    return left


# -- report ---------------------------------------------------------------------------------------

def difference(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(largest |ours - ref|, that over the largest |ref|)."""
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    if ours.shape != ref.shape:
        raise ValueError(f"shapes differ: {tuple(ours.shape)} vs {tuple(ref.shape)}")
    absolute = float((ours - ref).abs().max()) if ours.numel() else 0.0
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    return absolute, (absolute / scale if scale > 0 else (0.0 if absolute == 0 else float("inf")))


class Report:
    """Collects one line per compared quantity; :meth:`finish` prints the verdict."""

    def __init__(self, tolerance: float = TOLERANCE):
        self.tolerance = tolerance
        self.failed: list[str] = []

    def compare(self, label: str, ours, ref, note: str = "") -> float:
        """``ours``/``ref``: tensors, or mappings of the same names to tensors (one line,
        the worst entry named). Returns the relative difference."""
        if isinstance(ours, Mapping):
            if set(ours) != set(ref):
                raise ValueError(f"{label}: entries differ: {sorted(set(ours) ^ set(ref))[:5]}")
            rows = {k: difference(ours[k], ref[k]) for k in ours}
            worst = max(rows, key=lambda k: rows[k][1])
            absolute, relative = max(r[0] for r in rows.values()), rows[worst][1]
            note = f"{len(rows)} tensors, worst {worst}" + (f"; {note}" if note else "")
        else:
            absolute, relative = difference(torch.as_tensor(ours), torch.as_tensor(ref))
        ok = relative <= self.tolerance
        if not ok:
            self.failed.append(label)
        print(f"  {label:<34} max|d| {absolute:9.3e}  rel {relative:9.3e}  {'PASS' if ok else 'FAIL'}"
              + (f"  ({note})" if note else ""), flush=True)
        return relative

    def compare_masks(self, label: str, ours: torch.Tensor, ref: torch.Tensor, ref_margin: torch.Tensor) -> int:
        """Binary predictions: the pixels that differ; they pass only where the
        reference's decision margin ``ref_margin`` (e.g. ``p - 0.5``) is within the
        tolerance, i.e. a float-rounding tie. Returns the count."""
        differ = ours.bool() != ref.bool()
        n = int(differ.sum())
        worst = float(ref_margin[differ].abs().max()) if n else 0.0
        ok = worst <= self.tolerance
        if not ok:
            self.failed.append(label)
        print(f"  {label:<34} {n} of {differ.numel()} pixels differ (largest reference margin there "
              f"{worst:.2e})  {'PASS' if ok else 'FAIL'}", flush=True)
        return n

    @staticmethod
    def info(label: str, text: str) -> None:
        print(f"  {label:<34} {text}", flush=True)

    def finish(self) -> int:
        """Prints PASS/FAIL overall; returns the exit status (0 = pass)."""
        if self.failed:
            print(f"FAIL at relative tolerance {self.tolerance:g}: {', '.join(self.failed)}")
            return 1
        print(f"PASS: every difference within {self.tolerance:g} relative")
        return 0


def alternate(steps: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, dict]:
    """Seconds of each callable over ``rounds`` rounds, all callables once per round in
    turn (load drifts hit them alike), after ``warmup`` untimed rounds:
    ``{name: {"wall": [...], "cpu": [...]}}``, ``cpu`` being the process's CPU time (all
    its threads), the steadier figure on a machine shared with other work."""
    times = {k: {"wall": [], "cpu": []} for k in steps}
    for i in range(warmup + rounds):
        for k, fn in steps.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            if i >= warmup:
                times[k]["wall"].append(time.perf_counter() - w0)
                times[k]["cpu"].append(time.process_time() - c0)
    return times


# --------------------------------------------------------------------------------------
# Step timing beside SSL-ALPNet (each script's --timing)
# --------------------------------------------------------------------------------------

# the training loop's settings of the reference (``fsmis.train``); only the optimiser's
# cost matters here, so the schedule's length is arbitrary
TIMING_CFG = {"bg_weight": 0.05, "fg_weight": 1.0, "align_weight": 1.0, "lr": 1e-3, "momentum": 0.9,
              "weight_decay": 5e-4, "lr_step": 1000, "lr_gamma": 0.95, "steps": 1000}


def add_timing_args(p: argparse.ArgumentParser, method: str, only_flag: str = "--timing-only") -> None:
    p.add_argument("--timing", type=int, default=0,
                   help=f"timed training-step rounds of {method} vs SSL-ALPNet (0: none)")
    p.add_argument(only_flag, action="store_true", help="only the timing (no reference needed)")


def run_timing_only(p: argparse.ArgumentParser, args, timing: Callable) -> bool:
    """The scripts' shared start: torch threads as asked; with ``--timing-only`` run
    ``timing(args, episode, rounds)`` and return True (nothing else to do); otherwise
    a checkout is required."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.timing_only:
        timing(args, episode(args.size, args.seed), max(args.timing, 1))
        return True
    if not args.reference:
        p.error("--reference is required (unless --timing-only)")
    return False


def training_steps(models: Mapping[str, nn.Module], ep: dict) -> dict[str, Callable[[], object]]:
    """``{name: one training step of that model on ep}`` (``fsmis.train.training_step``,
    SGD, each model its own optimiser); models that train on the query label get it."""
    from fsmis import train as training_loop

    steps = {}
    for name, model in models.items():
        opt, _ = training_loop.make_optimizer(model, TIMING_CFG)
        with_label = bool(getattr(model, "takes_query_label", False))
        steps[name] = (lambda m=model, o=opt, w=with_label: training_loop.training_step(m, ep, TIMING_CFG, o,
                                                                                          with_label=w))
    return steps


def trunk_step(module: nn.Module, encode: Callable[[torch.Tensor], torch.Tensor], ep: dict) -> Callable[[], None]:
    """A training step of an encoder alone: ``encode`` on support and query, the mean
    as the loss, backward, SGD step on ``module``'s parameters."""
    from fsmis import train as training_loop

    opt, _ = training_loop.make_optimizer(module, TIMING_CFG)

    def step():
        opt.zero_grad(set_to_none=True)
        encode(torch.cat([ep["sup_img"], ep["qry_img"]])).mean().backward()
        opt.step()

    return step


def print_timing(times: Mapping[str, dict], method: str, baseline: str = "ssl_alpnet",
                 trunk: str | None = None) -> dict[str, dict[str, float]]:
    """Medians of :func:`alternate`'s times, per step and clock, then ``method /
    baseline`` per clock (and the method's own part, ``method - trunk``, if a trunk step
    was timed). Returns ``{name: {"wall": median, "cpu": median}}``."""
    import statistics

    med = {k: {c: statistics.median(v[c]) for c in ("wall", "cpu")} for k, v in times.items()}
    for k, v in times.items():
        print(f"  training step {k:<20} median wall {med[k]['wall']:.3f} s, CPU {med[k]['cpu']:.3f} s  "
              f"(wall: {', '.join(f'{x:.3f}' for x in v['wall'])})")
    for clock in ("wall", "cpu"):
        m = {k: v[clock] for k, v in med.items()}
        line = f"  {clock}: ratio {method} / {baseline} {m[method] / m[baseline]:.3f}"
        if trunk:
            line += (f"; {trunk} / {baseline} {m[trunk] / m[baseline]:.3f}; {method}'s own part "
                     f"({method} - trunk) {m[method] - m[trunk]:.3f} s")
        print(line)
    print(f"  threads: {torch.get_num_threads()}, {len(next(iter(times.values()))['wall'])} rounds after 1 warm-up")
    return med
