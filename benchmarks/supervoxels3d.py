"""Time per volume of ``fsmis.data.supervoxels.supervoxels_3d`` beside the ADNet reference's
compiled Cython supervoxels, on the same volumes in one run, and how far their labels agree.

Volumes: the phantom (``fsmis.data.phantom`` case 0, preprocessed as CT by
``fsmis.data.preprocess`` to 128 x 128 and 256 x 256 in-plane, its own ~40 slices), the same
case windowed but not resampled (integer HU: many equal edge weights, so the tie order shows)
and a random texture (uniform noise smoothed in-plane, 40 x 256 x 256, float32). Parameters: the
reference's ``generate_supervoxels.py`` (scale 1, sigma 0, fg_thresh 10, n_sv 5000 scaled
to the slice area as ours does, the same value passed to both).

Per volume and repeat the reference and ours run back to back (median of ``--repeats``), so
both see the same machine load. Timed: the whole per-volume job (rescale to 0..255,
segmentation, per-slice body mask, masking); ``seg`` is the segmentation call alone. Ours is
warmed up first (numba compiles once, or loads its cache); that first call is reported apart.

Agreement: with ``tie_order="numpy"`` (the reference's unstable ``np.argsort``) ours must give
the reference's int32 ids exactly; with the default ``"stable"`` the labels differ only where
the order of equal edge weights matters. ``differ`` is then the share of voxels outside the
reference segment that best overlaps their own segment.

The reference is not part of this project. Build it yourself, e.g.::

    mkdir -p /tmp/ref_sv && git -C ADNet archive HEAD supervoxels | tar -x -C /tmp/ref_sv
    pip install --target /tmp/ref_sv_libs "cython<3"
    cd /tmp/ref_sv/supervoxels && PYTHONPATH=/tmp/ref_sv_libs python setup.py build_ext --inplace
    python benchmarks/supervoxels3d.py --reference /tmp/ref_sv/supervoxels

Without ``--reference`` ours is timed alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from fsmis.data import phantom, preprocess
from fsmis.data import supervoxels as sv


def volumes(sizes, texture_size: int, seed: int = 0):
    """(name, float32 (z, y, x) volume, spacing_zyx)."""
    image, label = phantom.generate_case(0, seed)
    for size in sizes:
        img, _ = preprocess.preprocess_case(image, label, "CT", {"image_size": size})
        yield f"phantom {size}", sitk.GetArrayFromImage(img), tuple(img.GetSpacing()[::-1])
    # not resampled: the HU integers give few distinct values, so many equal edge weights
    native = preprocess.ct_intensity(sitk.GetArrayFromImage(image), preprocess.DEFAULTS["ct_window"])
    yield f"phantom native {native.shape[2]}", native, tuple(image.GetSpacing()[::-1])
    rng = np.random.default_rng(seed)
    tex = ndimage.gaussian_filter(rng.random((40, texture_size, texture_size)), (0, 1.5, 1.5))
    yield f"texture {texture_size}", (tex * 255).astype(np.float32), (5.0, 1.2, 1.2)


def reference_job(ref, volume, spacing_zyx, min_size, fg_thresh=10.0):
    """The body of generate_supervoxels.py's loop (``img.ptp()`` -> ``np.ptp``: numpy 2 dropped
    the method); its own ``fg_mask2d`` and ``supervox_masking``. Returns (ids, seg seconds)."""
    img = 255 * (volume - volume.min()) / np.ptp(volume)
    z, y, x = spacing_zyx
    t0 = time.perf_counter()
    seg = ref.felzenszwalb_3d(img, min_size=min_size, sigma=0, spacing=(z, x, y))
    t_seg = time.perf_counter() - t0
    fg = np.zeros(seg.shape)
    for i in range(seg.shape[0]):
        fg[i] = ref.fg_mask2d(img[i, ...], fg_thresh)
    return ref.supervox_masking(seg, fg), t_seg


def ours_job(volume, spacing_zyx, min_size, tie_order="stable"):
    params = {"min_size": min_size, "min_size_area": None, "tie_order": tie_order, "consecutive_ids": False}
    return sv.supervoxels_3d(volume, spacing_zyx, **params)


def ours_seg_seconds(volume, spacing_zyx, min_size):
    img = sv.rescale_255(volume)
    t0 = time.perf_counter()
    sv.felzenszwalb_3d(img, spacing_zyx, scale=1.0, sigma=0.0, min_size=min_size)
    return time.perf_counter() - t0


def differ(a: np.ndarray, b: np.ndarray) -> float:
    """Share of voxels not in the segment of ``b`` that best overlaps their segment of ``a``."""
    pairs, counts = np.unique(np.stack([a.ravel(), b.ravel()]).astype(np.int64), axis=1, return_counts=True)
    best = np.zeros(int(a.max()) + 1, np.int64)
    np.maximum.at(best, pairs[0], counts)
    return 1.0 - best.sum() / a.size


def load_reference(path: Path):
    sys.path.insert(0, str(path))
    import felzenszwalb_3d  # noqa: F401  (the built extension must import)
    import generate_supervoxels as ref  # its globs find nothing here, so its loop does not run

    return ref


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", type=Path, help="the reference's built supervoxels/ folder")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="phantom in-plane sizes")
    ap.add_argument("--texture-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-size", type=int, default=5000, help="n_sv at 256 x 256, scaled by slice area")
    ap.add_argument("--out", type=Path, help="write the rows as JSON")
    args = ap.parse_args(argv)
    ref = load_reference(args.reference) if args.reference else None

    t0 = time.perf_counter()
    ours_job(np.random.default_rng(0).random((3, 8, 8)), (1.0, 1.0, 1.0), 4)
    first_call = time.perf_counter() - t0
    print(f"CPU: {cpu_model()}; numpy {np.__version__}; first call of ours (numba compile or cache load): "
          f"{first_call:.1f} s")

    rows = []
    for name, vol, spacing in volumes(args.sizes, args.texture_size):
        min_size = max(1, int(round(args.min_size * vol.shape[1] * vol.shape[2] / 256 ** 2)))
        t_ref, t_ours, s_ref, s_ours = [], [], [], []
        for _ in range(args.repeats):
            if ref is not None:
                t = time.perf_counter()
                ref_ids, seg_s = reference_job(ref, vol, spacing, min_size)
                t_ref.append(time.perf_counter() - t)
                s_ref.append(seg_s)
            t = time.perf_counter()
            ours = ours_job(vol, spacing, min_size)
            t_ours.append(time.perf_counter() - t)
            s_ours.append(ours_seg_seconds(vol, spacing, min_size))
        row = {"volume": name, "shape": list(vol.shape), "min_size": min_size,
               "ours_ms": 1e3 * float(np.median(t_ours)), "ours_seg_ms": 1e3 * float(np.median(s_ours)),
               "supervoxels": int(len(np.unique(ours)) - (ours == 0).any())}
        if ref is not None:
            exact = ours_job(vol, spacing, min_size, tie_order="numpy")
            row.update({"ref_ms": 1e3 * float(np.median(t_ref)), "ref_seg_ms": 1e3 * float(np.median(s_ref)),
                        "ratio": float(np.median(t_ours) / np.median(t_ref)),
                        "ref_supervoxels": int(len(np.unique(ref_ids)) - (ref_ids == 0).any()),
                        "identical_numpy_ties": bool(np.array_equal(exact, ref_ids)),
                        "identical_stable": bool(np.array_equal(ours, ref_ids)),
                        "differ_stable": differ(ours, ref_ids)})
        rows.append(row)
        print(json.dumps(row), flush=True)

    cols = ["volume", "shape", "ours_ms", "ours_seg_ms", "supervoxels"]
    if ref is not None:
        cols[3:3] = ["ref_ms", "ratio", "ref_seg_ms"]
        cols += ["ref_supervoxels", "identical_numpy_ties", "identical_stable", "differ_stable"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{r[c]:.0f}" if c.endswith("_ms") else f"{r[c]:.2f}" if c == "ratio"
                 else f"{r[c]:.2e}" if c == "differ_stable" else str(r[c]) for c in cols]
        print("| " + " | ".join(cells) + " |")
    if args.out:
        args.out.write_text(json.dumps({"cpu": cpu_model(), "first_call_s": first_call, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
