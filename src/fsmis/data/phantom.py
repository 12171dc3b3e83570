"""Synthetic abdominal CT phantom: the embedded demo dataset (no network needed).

Each case is drawn from ``numpy.random.default_rng([seed, index])``, so a case depends
only on ``(index, seed, params)`` and can be regenerated on its own.

Geometry: LPS physical space with identity direction, so array axis x (index 0) runs
from the patient's right to left, y (index 0) from anterior to posterior, and z from
inferior to superior: **slice 0 is the most inferior slice** (feet side) and the last
slice is the top of the scan (liver dome). "Lower" below therefore means a smaller
z index.

Internally the anatomy is described in millimetres in a body frame: ``x`` (+ = patient
left), ``y`` (+ = posterior), both relative to the body centre, and ``d`` = depth below
the top slice (+ = inferior). Organs are implicit shapes (lobulated, rotated
ellipsoids) evaluated on coordinates warped by a smooth random displacement field;
tissues are painted in anatomical order, and the organ label is whatever organ owns
the voxel at the end, so label and intensity always agree.

Raw label values are the phantom's own (``PHANTOM_LABEL_MAP``), not canonical ids:
the dataset config maps them like any other dataset's.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from fsmis.io import write_image

PHANTOM_LABEL_MAP = {1: "liver", 2: "spleen", 3: "right_kidney", 4: "left_kidney"}
_LIVER, _SPLEEN, _RKID, _LKID = 1, 2, 3, 4

DEFAULTS = {
    "size_range": (176, 208),  # in-plane grid (px), chosen so the body fits
    "spacing_xy_range": (1.7, 2.1),  # in-plane spacing (mm)
    "spacing_z_range": (4.0, 6.0),  # slice spacing (mm)
    "n_slices_range": (36, 48),
    "coverage_mm_range": (200.0, 235.0),  # cranio-caudal extent: liver dome to below kidneys
    "body_scale": 0.08,  # +- relative body size
    # Inter-patient variability. Real patients are off-centre in the field of view by
    # 1-3 cm (table height, lateral placement) and organ positions relative to the body
    # vary by about a centimetre; narrower ranges made the phantom unrealistically
    # aligned (a non-learned support-mask transfer then scored 63 % Dice).
    "position_mm": 12.0,  # +- organ position jitter
    "table_offset_mm": 15.0,  # +- patient position in the field of view (x and y)
    "size_jitter": 0.10,  # +- relative organ size
    "rotation_deg": 8.0,  # +- organ in-plane rotation
    "deformation_mm": 4.0,  # amplitude of the smooth displacement field
    "noise_sd": 12.0,  # white noise (HU)
    "texture_scale": 1.0,  # multiplies every tissue's low-pass texture amplitude
    "n_bowel_loops": (6, 12),
}

# tissue codes -> (mean HU, texture sd HU); per-case jitter is added in _intensities
_AIR, _SUBFAT, _MUSCLE, _VFAT, _LUNG, _BOWEL, _GAS = 0, 1, 2, 3, 4, 5, 6
_LIVER_T, _VESSEL, _SPLEEN_T, _CORTEX, _MEDULLA = 7, 8, 9, 10, 11
_BONE, _MARROW, _DISC, _CSF, _BLOOD, _STOMACH = 12, 13, 14, 15, 16, 17
_TISSUES = {
    _AIR: (-1000.0, 0.0),
    _SUBFAT: (-100.0, 8.0),
    _MUSCLE: (50.0, 8.0),
    _VFAT: (-90.0, 10.0),
    _LUNG: (-850.0, 40.0),
    _BOWEL: (25.0, 14.0),
    _GAS: (-900.0, 30.0),
    _LIVER_T: (60.0, 6.0),
    _VESSEL: (150.0, 8.0),
    _SPLEEN_T: (52.0, 6.0),
    _CORTEX: (170.0, 12.0),
    _MEDULLA: (90.0, 10.0),
    _BONE: (700.0, 60.0),
    _MARROW: (250.0, 40.0),
    _DISC: (85.0, 10.0),
    _CSF: (15.0, 5.0),
    _BLOOD: (160.0, 6.0),
    _STOMACH: (30.0, 12.0),
}


def generate_case(index: int, seed: int, **params) -> tuple[sitk.Image, sitk.Image]:
    """Generate phantom case ``index`` of the dataset drawn with ``seed``.

    Returns ``(image, label)``: image int16 HU, label uint8 with raw values
    ``PHANTOM_LABEL_MAP`` (1 liver, 2 spleen, 3 right kidney, 4 left kidney), same
    geometry. Slice 0 is inferior (see the module docstring).

    Keyword parameters (defaults in ``DEFAULTS``):
      size_range (176, 208): in-plane grid bounds in px (the body width picks the size);
      spacing_xy_range (1.7, 2.1), spacing_z_range (4, 6): spacing in mm;
      n_slices_range (36, 48); coverage_mm_range (200, 235): cranio-caudal extent;
      body_scale 0.08: +- relative body size; position_mm 12: +- organ shift;
      table_offset_mm 15: +- patient position in the field of view (x, y);
      size_jitter 0.10: +- organ size; rotation_deg 8: +- organ in-plane rotation;
      deformation_mm 4: smooth displacement amplitude; noise_sd 12: white noise HU;
      texture_scale 1: low-pass texture multiplier; n_bowel_loops (6, 12).
    """
    p = _params(params)
    rng = np.random.default_rng([int(seed), int(index)])
    frame = _Frame(rng, p)
    tissue = np.full(frame.shape, _AIR, np.uint8)
    organ = np.zeros(frame.shape, np.uint8)
    _paint_body(frame, tissue, organ, rng)
    _paint_viscera(frame, tissue, organ, rng, p)
    _paint_spine(frame, tissue, organ, rng)
    tissue[~frame.body] = _AIR  # nothing leaves the body outline
    organ[~frame.body] = 0
    missing = set(PHANTOM_LABEL_MAP) - set(np.unique(organ).tolist())
    if missing:  # the anatomy ranges are chosen so this cannot happen; fail loudly if it does
        raise RuntimeError(f"phantom case {index} (seed {seed}) lacks labels {sorted(missing)}")
    hu = _intensities(tissue, rng, p)
    return frame.to_image(hu.astype(np.int16)), frame.to_image(organ)


def write_dataset(out_dir: str | os.PathLike, n_cases: int, seed: int, **params) -> list[str]:
    """Write ``n_cases`` phantom cases as ``{out_dir}/phantom_{i:03d}_image|label.nii.gz``."""
    out = Path(out_dir)
    cases = []
    for i in range(n_cases):
        case = f"phantom_{i:03d}"
        image, label = generate_case(i, seed, **params)
        write_image(image, out / f"{case}_image.nii.gz")
        write_image(label, out / f"{case}_label.nii.gz")
        cases.append(case)
    return cases


def _params(overrides: dict) -> dict:
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown phantom parameter(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **overrides}


def _jit(rng, amount: float) -> float:
    return float(rng.uniform(-amount, amount))


class _Frame:
    """Voxel grid, body-frame coordinates and the warped coordinates organs are drawn on."""

    def __init__(self, rng, p):
        self.body_scale = 1.0 + _jit(rng, p["body_scale"])
        self.a, self.b = 150.0 * self.body_scale, 108.0 * self.body_scale  # body semi-axes (mm)
        sxy = float(rng.uniform(*p["spacing_xy_range"]))
        lo, hi = p["size_range"]
        n_xy = int(np.clip(np.ceil((2 * self.a + 40.0) / sxy), lo, hi))  # 20 mm air each side
        n_z = int(rng.integers(p["n_slices_range"][0], p["n_slices_range"][1] + 1))
        dz = float(np.clip(rng.uniform(*p["coverage_mm_range"]) / n_z, *p["spacing_z_range"]))
        self.spacing = (sxy, sxy, dz)
        self.shape = (n_z, n_xy, n_xy)
        self.coverage = (n_z - 1) * dz
        # the patient is not exactly centred in the field of view
        x_shift, y_shift = _jit(rng, p["table_offset_mm"]), _jit(rng, p["table_offset_mm"])
        self.x = (np.arange(n_xy) - (n_xy - 1) / 2) * sxy + x_shift
        self.y = (np.arange(n_xy) - (n_xy - 1) / 2) * sxy + y_shift
        self.d = (n_z - 1 - np.arange(n_z)) * dz  # slice 0 inferior -> largest depth
        self.origin = (float(self.x[0] - x_shift), float(self.y[0] - y_shift), float(rng.uniform(-700, -500)))
        self.X, self.Y, self.D = self._warped(rng, p["deformation_mm"])
        self.disp_max = 1.6 * p["deformation_mm"]
        self.body = self.superellipse(0.0, 0.0)

    def _warped(self, rng, amp):
        # smooth displacement = sum of separable low-frequency cosine products: cheap to
        # evaluate on the full grid and smooth by construction
        shape = self.shape
        coords = []
        for base, axis in ((self.x, 2), (self.y, 1), (self.d, 0)):
            field = np.zeros(shape, np.float32)
            for _ in range(3):
                terms = []
                for c in (self.d, self.y, self.x):
                    wl = rng.uniform(90.0, 220.0)
                    terms.append(np.cos(2 * np.pi * c / wl + rng.uniform(0, 2 * np.pi)).astype(np.float32))
                a = np.float32(rng.normal(0.0, amp / np.sqrt(3)))
                field += a * terms[0][:, None, None] * terms[1][None, :, None] * terms[2][None, None, :]
            shape_b = [1, 1, 1]
            shape_b[axis] = -1
            coords.append(field + base.astype(np.float32).reshape(shape_b))
        return coords

    def superellipse(self, inset: float, inset_post: float) -> np.ndarray:
        """Body outline shrunk by ``inset`` mm (posteriorly ``inset_post`` more), as a mask."""
        zmod = 1.0 + 0.03 * np.cos(2 * np.pi * self.d / 260.0)[:, None, None]
        a = (self.a - inset) * zmod
        b_ant = (self.b - inset) * zmod
        b_post = (0.92 * self.b - inset - inset_post) * zmod  # flatter back on the table
        y = self.y[None, :, None]
        b = np.where(y < 0, b_ant, b_post)
        r = np.abs(self.x[None, None, :] / a) ** 2.3 + np.abs(y / b) ** 2.3
        return r <= 1.0

    def box(self, centre, radius):
        """Index slices (z, y, x) covering a sphere of ``radius`` mm (plus warp margin)."""
        r = radius + self.disp_max + 2.0
        sx, sy, dz = self.spacing
        cx, cy, cd = centre
        i0, i1 = (cx - r - self.x[0]) / sx, (cx + r - self.x[0]) / sx
        j0, j1 = (cy - r - self.y[0]) / sy, (cy + r - self.y[0]) / sy
        k0, k1 = (self.shape[0] - 1) - (cd + r) / dz, (self.shape[0] - 1) - (cd - r) / dz

        def rng_(a, b, n):
            return slice(int(np.clip(np.floor(a), 0, n)), int(np.clip(np.ceil(b) + 1, 0, n)))

        return (rng_(k0, k1, self.shape[0]), rng_(j0, j1, self.shape[1]), rng_(i0, i1, self.shape[2]))

    def local(self, sl, centre, theta=0.0, tilt=0.0):
        """Warped coordinates inside ``sl`` in a shape's frame: shifted, rotated by
        ``theta`` (rad, in-plane) then tilted by ``tilt`` (rad, in the x-d plane)."""
        px = self.X[sl] - np.float32(centre[0])
        py = self.Y[sl] - np.float32(centre[1])
        pd = self.D[sl] - np.float32(centre[2])
        c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
        qx, qy = c * px + s * py, -s * px + c * py
        if tilt:
            ct, st = np.float32(np.cos(tilt)), np.float32(np.sin(tilt))
            qx, pd = ct * qx + st * pd, -st * qx + ct * pd
        return qx, qy, pd

    def to_image(self, arr: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        return img


def _blob(frame, centre, semi, theta=0.0, tilt=0.0, lobes=None):
    """Mask (within its box) of a rotated ellipsoid whose radius is modulated by
    ``lobes`` = [(amplitude, wave vector (3,), phase)], giving a lobulated outline."""
    sl = frame.box(centre, max(semi) * (1.0 + sum(abs(a) for a, _, _ in lobes or [])))
    qx, qy, qd = frame.local(sl, centre, theta, tilt)
    ux, uy, ud = qx / np.float32(semi[0]), qy / np.float32(semi[1]), qd / np.float32(semi[2])
    r = np.sqrt(ux * ux + uy * uy + ud * ud)
    if lobes:
        inv = 1.0 / np.maximum(r, np.float32(1e-6))
        mod = np.ones_like(r)
        for amp, w, ph in lobes:
            mod += np.float32(amp) * np.sin(np.float32(w[0]) * ux * inv + np.float32(w[1]) * uy * inv
                                            + np.float32(w[2]) * ud * inv + np.float32(ph))
        r = r / mod
    return sl, r <= 1.0


def _lobes(rng, n, amp):
    return [(rng.uniform(0.3, 1.0) * amp, rng.normal(0.0, 2.5, 3), rng.uniform(0, 2 * np.pi)) for _ in range(n)]


def _paint(tissue, organ, sl, mask, code, label=0, where=None):
    """Set tissue ``code`` (and organ ``label``) on ``mask`` within box ``sl``;
    ``where`` optionally restricts painting to voxels whose current tissue is in it."""
    if where is not None:
        mask = mask & np.isin(tissue[sl], where)
    tissue[sl][mask] = code
    organ[sl][mask] = label


def _paint_body(frame, tissue, organ, rng):
    fat = rng.uniform(10.0, 28.0)  # subcutaneous fat thickness (mm)
    muscle = rng.uniform(8.0, 14.0)
    frame.cavity = frame.superellipse(fat + muscle, 6.0)
    # cavity semi-axes (mm): organs hugging the wall are placed relative to them
    frame.cav_a, frame.cav_bp = frame.a - fat - muscle, 0.92 * frame.b - fat - muscle - 6.0
    full = (slice(None),) * 3
    _paint(tissue, organ, full, frame.body, _SUBFAT)
    _paint(tissue, organ, full, frame.superellipse(fat, 0.0), _MUSCLE)
    _paint(tissue, organ, full, frame.cavity, _VFAT)
    _paint_ribs(frame, tissue, organ, rng, fat, muscle)


def _paint_ribs(frame, tissue, organ, rng, fat, muscle):
    # lower ribs run obliquely, so an axial slice cuts each one as a few short arcs
    # in the lateral wall of the upper slices
    ring = frame.superellipse(fat + 0.2 * muscle, 0.0) & ~frame.superellipse(fat + 0.8 * muscle, 0.0)
    ang = np.rad2deg(np.arctan2(frame.y[None, :, None], np.abs(frame.x[None, None, :])))  # 0 = lateral
    full = (slice(None),) * 3
    for d0 in np.arange(rng.uniform(0, 20), 110.0, rng.uniform(26.0, 32.0)):
        band = (np.abs(frame.d - d0) < 5.0)[:, None, None]
        for a0 in rng.uniform(-55.0, 35.0, size=2):
            arc = np.abs(ang - a0) < rng.uniform(8.0, 14.0)
            _paint(tissue, organ, full, ring & band & arc, _BONE)


def _organ_jitter(rng, p, centre, semi, theta):
    j = p["position_mm"]
    c = (centre[0] + _jit(rng, j), centre[1] + _jit(rng, j), centre[2] + _jit(rng, j))
    f = 1.0 + _jit(rng, p["size_jitter"])
    s = tuple(v * f * (1.0 + _jit(rng, 0.03)) for v in semi)
    return c, s, theta + np.deg2rad(_jit(rng, p["rotation_deg"]))


def _paint_viscera(frame, tissue, organ, rng, p):
    bs = frame.body_scale
    inside = (_VFAT,)
    for side in (-1, 1):  # posterior lung bases in the top slices
        sl, m = _blob(frame, (side * 75 * bs, 40 * bs, -28.0), (55 * bs, 42 * bs, 68.0), lobes=_lobes(rng, 2, 0.05))
        _paint(tissue, organ, sl, m & frame.cavity[sl], _LUNG, where=inside)
    _paint_bowel(frame, tissue, organ, rng, p)
    _paint_liver(frame, tissue, organ, rng, p)
    _paint_spleen(frame, tissue, organ, rng, p)
    _paint_kidneys(frame, tissue, organ, rng, p)
    _paint_vessels(frame, tissue, organ, rng)


def _paint_bowel(frame, tissue, organ, rng, p):
    bs = frame.body_scale
    # stomach: left upper anterior, gas anterior (supine: gas rises to small y)
    c = (45 * bs + _jit(rng, 8), -38 * bs + _jit(rng, 6), 75.0 + _jit(rng, 10))
    _paint_loop(frame, tissue, organ, rng, c, (42 * bs, 30 * bs, 40.0), _STOMACH, rng.uniform(0.3, 0.7))
    lo, hi = p["n_bowel_loops"]
    for _ in range(int(rng.integers(lo, hi + 1))):
        c = (rng.uniform(-95, 95) * bs, rng.uniform(-75, 5) * bs, rng.uniform(105.0, frame.coverage + 20))
        semi = (rng.uniform(12, 24), rng.uniform(10, 18), rng.uniform(15, 35))
        gas = rng.uniform(0.2, 0.9) if rng.random() < 0.6 else None
        _paint_loop(frame, tissue, organ, rng, c, semi, _BOWEL, gas, theta=rng.uniform(0, np.pi))


def _paint_loop(frame, tissue, organ, rng, centre, semi, code, gas, theta=0.0):
    sl, m = _blob(frame, centre, semi, theta, lobes=_lobes(rng, 2, 0.08))
    m &= frame.cavity[sl]
    _paint(tissue, organ, sl, m, code, where=(_VFAT, _BOWEL, _GAS))
    if gas is not None:  # air-fluid level: gas above a horizontal plane on the anterior side
        level = centre[1] - (1.0 - gas) * semi[1]
        _paint(tissue, organ, sl, m & (frame.Y[sl] < level), _GAS, where=(code,))


def _paint_liver(frame, tissue, organ, rng, p):
    bs = frame.body_scale
    can_take = (_VFAT, _BOWEL, _GAS, _LUNG, _STOMACH)
    parts = [  # right lobe, left lobe crossing the midline anteriorly, caudate
        ((-58 * bs, 0.0, 90.0), (66 * bs, 70 * bs, 68.0), np.deg2rad(-15)),
        ((8 * bs, -45 * bs, 65.0), (55 * bs, 26 * bs, 36.0), np.deg2rad(10)),
        ((-14 * bs, 14 * bs, 80.0), (18 * bs, 20 * bs, 28.0), 0.0),
    ]
    shift = (_jit(rng, p["position_mm"]), _jit(rng, p["position_mm"]), _jit(rng, p["position_mm"]))
    scale = 1.0 + _jit(rng, p["size_jitter"])
    for centre, semi, theta in parts:
        c = tuple(a + b for a, b in zip(centre, shift))
        s = tuple(v * scale * (1.0 + _jit(rng, 0.04)) for v in semi)
        th = theta + np.deg2rad(_jit(rng, p["rotation_deg"]))
        sl, m = _blob(frame, c, s, th, lobes=_lobes(rng, 3, 0.07))
        _paint(tissue, organ, sl, m & frame.cavity[sl], _LIVER_T, _LIVER, where=can_take)
    _paint_hepatic_vessels(frame, tissue, organ, rng, shift)


def _paint_hepatic_vessels(frame, tissue, organ, rng, shift):
    # a few enhancing branches radiating from the hilum: texture that is not noise
    bs = frame.body_scale
    hilum = np.array([-25 * bs + shift[0], 5 * bs + shift[1], 87.0 + shift[2]])
    for _ in range(int(rng.integers(4, 7))):
        direction = np.array([rng.uniform(-1.0, 0.3), rng.uniform(-0.6, 0.6), rng.uniform(-0.9, 0.5)])
        end = hilum + direction / np.linalg.norm(direction) * rng.uniform(50, 85)
        radius = rng.uniform(2.5, 5.0)
        mid = (hilum + end) / 2
        sl = frame.box(tuple(mid), np.linalg.norm(end - hilum) / 2 + radius)
        m = _segment_distance(frame, sl, hilum, end) <= radius
        _paint(tissue, organ, sl, m, _VESSEL, _LIVER, where=(_LIVER_T,))


def _segment_distance(frame, sl, a, b):
    px, py, pd = frame.X[sl] - a[0], frame.Y[sl] - a[1], frame.D[sl] - a[2]
    v = (b - a).astype(np.float32)
    t = np.clip((px * v[0] + py * v[1] + pd * v[2]) / np.float32(v @ v), 0, 1)
    return np.sqrt((px - t * v[0]) ** 2 + (py - t * v[1]) ** 2 + (pd - t * v[2]) ** 2)


def _paint_spleen(frame, tissue, organ, rng, p):
    bs = frame.body_scale
    centre = (0.74 * frame.cav_a, 0.5 * frame.cav_bp, 62.0)
    c, s, th = _organ_jitter(rng, p, centre, (24 * bs, 54 * bs, 48.0), np.deg2rad(48))
    sl, m = _blob(frame, c, s, th, lobes=_lobes(rng, 2, 0.06))
    # concave hilum: remove an ellipsoid on the medial-anterior side (crescent section)
    medial = (c[0] - 1.4 * s[0] * np.cos(th), c[1] - 1.4 * s[0] * np.sin(th), c[2])
    qx, qy, qd = frame.local(sl, medial, th)
    m &= (qx / (s[0] * 0.75)) ** 2 + (qy / (s[1] * 0.5)) ** 2 + (qd / (s[2] * 0.6)) ** 2 > 1
    can_take = (_VFAT, _BOWEL, _GAS, _LUNG, _STOMACH, _LIVER_T, _VESSEL)
    _paint(tissue, organ, sl, m & frame.cavity[sl], _SPLEEN_T, _SPLEEN, where=can_take)


def _paint_kidneys(frame, tissue, organ, rng, p):
    bs = frame.body_scale
    # (label, side (+1 = left), depth): the right kidney sits ~20 mm lower (below the liver)
    for label, side, depth in ((_RKID, -1, 132.0), (_LKID, 1, 112.0)):
        hilum_angle = np.deg2rad(35)  # hilum faces antero-medially
        theta = np.pi - hilum_angle if side < 0 else hilum_angle  # local +x points laterally
        c, s, th = _organ_jitter(rng, p, (side * 62 * bs, 30 * bs, depth), (26.0, 20.0, 52.0), theta)
        tilt = -np.deg2rad(12)  # local +x is lateral: the upper pole leans medially
        sl, outer = _blob(frame, c, s, th, tilt, lobes=_lobes(rng, 2, 0.03))
        qx, qy, qd = frame.local(sl, c, th, tilt)
        r = np.sqrt((qx / s[0]) ** 2 + (qy / s[1]) ** 2 + (qd / s[2]) ** 2)
        sinus = ((qx + 0.55 * s[0]) / (0.5 * s[0])) ** 2 + (qy / (0.4 * s[1])) ** 2 + (qd / (0.45 * s[2])) ** 2 < 1
        notch = (qx < -0.6 * s[0]) & (np.abs(qd) < 0.3 * s[2])  # hilum opening
        kidney = outer & ~notch
        # perirenal fat keeps the kidney apart from liver/spleen/bowel
        peri = (r < 1.25) & ~kidney
        _paint(tissue, organ, sl, peri & frame.cavity[sl], _VFAT,
               where=(_LIVER_T, _VESSEL, _SPLEEN_T, _BOWEL, _GAS, _STOMACH))
        _paint(tissue, organ, sl, kidney, _CORTEX, label)
        _paint(tissue, organ, sl, kidney & (r < 0.72), _MEDULLA, label)
        _paint(tissue, organ, sl, kidney & sinus, _VFAT, label)  # sinus fat belongs to the kidney label


def _paint_vessels(frame, tissue, organ, rng):
    bs = frame.body_scale
    for cx, cy, r in ((12 * bs, -6 * bs, 10.0), (-24 * bs, -2 * bs, 11.0)):  # aorta, IVC
        c = (cx + _jit(rng, 3), cy + _jit(rng, 3), frame.coverage / 2)
        sl = frame.box(c, frame.coverage)
        qx, qy, _ = frame.local(sl, c)
        m = (qx / r) ** 2 + (qy / (r * 0.9)) ** 2 <= 1
        _paint(tissue, organ, sl, m & frame.cavity[sl], _BLOOD)


def _paint_spine(frame, tissue, organ, rng):
    bs = frame.body_scale
    full = (slice(None),) * 3
    x, y = frame.x[None, None, :], frame.y[None, :, None]
    period = rng.uniform(28.0, 34.0)
    disc = ((frame.d + rng.uniform(0, period)) % period < 6.0)[:, None, None]
    cy = 24 * bs
    r_body = np.hypot(x / 17.0, (y - cy) / 15.0)
    canal = np.hypot(x / 8.0, (y - cy - 23.0) / 8.0)
    arch = (np.hypot(x / 15.0, (y - cy - 24.0) / 14.0) <= 1) & (canal > 1)
    spinous = (np.abs(x) < 4.0) & (y > cy + 30.0) & (y < cy + 52.0)
    for side in (-1, 1):  # paraspinal muscles, psoas (growing inferiorly)
        para = np.hypot((x - side * 30.0) / 24.0, (y - cy - 40.0) / 17.0) <= 1
        _paint(tissue, organ, full, para & frame.body, _MUSCLE)
        psoas_r = np.clip((frame.d - 95.0) * 0.2, 0.0, 24.0)[:, None, None]
        psoas = np.hypot(x - side * 35.0, y - cy + 2.0) <= psoas_r
        _paint(tissue, organ, full, psoas, _MUSCLE, where=(_VFAT, _BOWEL, _GAS))
    shell = (r_body <= 1) & (r_body > 0.82)
    _paint(tissue, organ, full, np.broadcast_to(r_body <= 1, frame.shape) & disc, _DISC)
    _paint(tissue, organ, full, np.broadcast_to((r_body <= 0.82), frame.shape) & ~disc, _MARROW)
    _paint(tissue, organ, full, np.broadcast_to(shell | arch | spinous, frame.shape) & ~disc, _BONE)
    _paint(tissue, organ, full, np.broadcast_to(canal <= 1, frame.shape), _CSF)


def _intensities(tissue, rng, p):
    n = max(_TISSUES) + 1
    mean = np.zeros(n, np.float32)
    tex = np.zeros(n, np.float32)
    for code, (m, t) in _TISSUES.items():
        mean[code], tex[code] = m + _jit(rng, 0.05 * abs(m) if code != _AIR else 0.0), t
    # contrast timing moves liver and spleen together; the spleen is drawn a little
    # brighter because partial volume with fat darkens its thin crescent more than the
    # liver, whose mean the enhancing vessels raise: measured means stay within ~12 HU
    liver = rng.uniform(55.0, 68.0)
    mean[_LIVER_T], mean[_SPLEEN_T] = liver, liver + rng.uniform(0.0, 8.0)
    mean[_CORTEX] = rng.uniform(150.0, 190.0)
    smooth = ndimage.gaussian_filter(rng.standard_normal(tissue.shape, dtype=np.float32), (0.7, 1.5, 1.5))
    smooth /= max(float(smooth.std()), 1e-6)
    hu = mean[tissue] + np.float32(p["texture_scale"]) * tex[tissue] * smooth
    hu = ndimage.gaussian_filter(hu, (0.35, 0.6, 0.6))  # partial volume at tissue borders
    hu += np.float32(p["noise_sd"]) * rng.standard_normal(tissue.shape, dtype=np.float32)
    return np.clip(np.rint(hu), -1024, 3071)
