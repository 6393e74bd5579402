"""Synthetic H&E-like tissue: class maps and their rendering.

One renderer serves the demo slide, the tests and synthetic patch datasets, so slides and
patches share statistics. Colours come from a Beer–Lambert stain model: per-pixel
haematoxylin and eosin concentrations times stain optical-density vectors, under a
near-white illuminant that is also the glass colour. All sizes are in µm and converted
with the image's µm/px (``mpp``), so the look holds at any resolution; coarser than
``MAX_RENDER_MPP`` the image is rendered finer and averaged down.

Smooth noise fields and nuclei are *global* functions of position in µm (drawn from
counter-based random streams keyed by a style key and a lattice cell), so any window of
a slide renders the same nuclei, fibres and stain variation whichever block or pyramid
level it is rendered in. Only the per-pixel grain comes from the caller's ``rng``.

Classes (LUAD-HistoSeg): 0 glass, 1 TE tumour epithelium, 2 NEC necrosis,
3 LYM lymphocytes, 4 TAS tumour-associated stroma.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

CLASS_NAMES: tuple[str, ...] = ("TE", "NEC", "LYM", "TAS")
CLASS_COLORS: tuple[tuple[int, int, int], ...] = ((205, 51, 51), (0, 255, 0), (65, 105, 225), (255, 165, 0))
GLASS, TE, NEC, LYM, TAS = 0, 1, 2, 3, 4

MAX_RENDER_MPP = 1.0  # coarser images are rendered at a finer µm/px and averaged down
_CHUNK_PX = 1024  # render windows are at most this many render pixels on a side

# --- counter-based smooth noise -------------------------------------------------------

_OFFSET = 1 << 24  # keeps lattice indices non-negative for SeedSequence
_LATTICE_CHUNK = 64  # lattice nodes per random stream along each axis
_BSPLINE_NORM = 1.0 / 0.4794  # unit standard deviation for a cubic B-spline of N(0, 1) nodes


def _bspline_weights(t: np.ndarray) -> np.ndarray:
    """(N, 4) cubic B-spline weights for fractional positions ``t`` in [0, 1)."""
    t2, t3 = t * t, t * t * t
    return np.stack(
        [(1 - t) ** 3 / 6, (3 * t3 - 6 * t2 + 4) / 6, (-3 * t3 + 3 * t2 + 3 * t + 1) / 6, t3 / 6], axis=1
    ).astype(np.float32)


def _bspline_dweights(t: np.ndarray) -> np.ndarray:
    """(N, 4) derivatives (per lattice unit) of the cubic B-spline weights."""
    t2 = t * t
    return np.stack([-((1 - t) ** 2) / 2, (3 * t2 - 4 * t) / 2, (-3 * t2 + 2 * t + 1) / 2, t2 / 2], axis=1).astype(
        np.float32
    )


def _interp_matrix(pos: np.ndarray, first_node: int, n_nodes: int) -> np.ndarray:
    """Dense (len(pos), n_nodes) B-spline matrix; ``pos`` in lattice units, node 0 = ``first_node``."""
    i0 = np.floor(pos).astype(np.int64)
    w = _bspline_weights(pos - i0)
    m = np.zeros((len(pos), n_nodes), np.float32)
    cols = i0[:, None] - first_node + np.arange(-1, 3)
    m[np.arange(len(pos))[:, None], cols] = w
    return m


class NoiseField:
    """Smooth N(0, 1) field over the plane: cubic B-spline through a lattice of random nodes.

    Node (i, j) sits at (i, j) · ``spacing_um`` and its value depends only on
    (key, tag, i, j), so the field is the same wherever and at whatever resolution it is
    sampled.
    """

    def __init__(self, key: int, tag: int, spacing_um: float) -> None:
        self.key, self.tag, self.spacing_um = int(key), int(tag), float(spacing_um)

    def _nodes(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        c = _LATTICE_CHUNK
        out = np.empty((r1 - r0, c1 - c0), np.float32)
        for ci in range(r0 // c, (r1 - 1) // c + 1):
            for cj in range(c0 // c, (c1 - 1) // c + 1):
                gen = np.random.default_rng([self.key, self.tag, ci + _OFFSET, cj + _OFFSET])
                block = gen.standard_normal((c, c), dtype=np.float32)
                y0, y1 = max(r0, ci * c), min(r1, (ci + 1) * c)
                x0, x1 = max(c0, cj * c), min(c1, (cj + 1) * c)
                out[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] = block[y0 - ci * c : y1 - ci * c, x0 - cj * c : x1 - cj * c]
        return out

    def grid(self, ys_um: np.ndarray, xs_um: np.ndarray) -> np.ndarray:
        """Field on the grid ``ys_um × xs_um`` (1-D µm coordinates), float32 (len(ys), len(xs))."""
        py = np.asarray(ys_um, np.float64) / self.spacing_um
        px = np.asarray(xs_um, np.float64) / self.spacing_um
        r0, r1 = int(np.floor(py.min())) - 1, int(np.floor(py.max())) + 3
        c0, c1 = int(np.floor(px.min())) - 1, int(np.floor(px.max())) + 3
        nodes = self._nodes(r0, r1, c0, c1)
        wy = _interp_matrix(py, r0, r1 - r0)
        wx = _interp_matrix(px, c0, c1 - c0)
        return (wy @ (nodes * _BSPLINE_NORM)) @ wx.T

    def points(self, y_um: np.ndarray, x_um: np.ndarray, gradient: bool = False) -> np.ndarray:
        """Field at scattered points, shape (N,); with ``gradient`` its (d/dy, d/dx) per µm, (2, N)."""
        py = np.asarray(y_um, np.float64) / self.spacing_um
        px = np.asarray(x_um, np.float64) / self.spacing_um
        if len(py) == 0:
            return np.zeros((2, 0) if gradient else (0,), np.float32)
        iy, ix = np.floor(py).astype(np.int64), np.floor(px).astype(np.int64)
        r0, c0 = int(iy.min()) - 1, int(ix.min()) - 1
        nodes = self._nodes(r0, int(iy.max()) + 3, c0, int(ix.max()) + 3) * _BSPLINE_NORM
        rows = iy[:, None] - r0 + np.arange(-1, 3)  # (N, 4)
        cols = ix[:, None] - c0 + np.arange(-1, 3)
        vals = nodes[rows[:, :, None], cols[:, None, :]]  # (N, 4, 4)
        wy, wx = _bspline_weights(py - iy), _bspline_weights(px - ix)
        if not gradient:
            return np.einsum("nij,ni,nj->n", vals, wy, wx)
        dwy, dwx = _bspline_dweights(py - iy), _bspline_dweights(px - ix)
        dy = np.einsum("nij,ni,nj->n", vals, dwy, wx) / self.spacing_um
        dx = np.einsum("nij,ni,nj->n", vals, wy, dwx) / self.spacing_um
        return np.stack([dy, dx])


# --- stain and style --------------------------------------------------------------------

_H_OD = np.array([0.65, 0.70, 0.29])  # haematoxylin optical density per unit concentration (Ruifrok)
_E_OD = np.array([0.12, 0.85, 0.48])  # eosin, a little bluer than Ruifrok's so it reads pink
_LN10 = math.log(10.0)


@dataclass(frozen=True)
class Stain:
    """Stain appearance of one slide or patch: OD vectors, concentration gains, illuminant."""

    h_od: tuple[float, float, float]
    e_od: tuple[float, float, float]
    h_gain: float
    e_gain: float
    illuminant: tuple[float, float, float]  # glass RGB, 0..255


def random_stain(rng: np.random.Generator, variation: float = 1.0) -> Stain:
    """A stain drawn around the reference: jittered OD vectors, ±~15 % gains, illuminant 236–250."""
    def jitter(v: np.ndarray) -> tuple[float, float, float]:
        w = np.clip(v + rng.normal(0.0, 0.035 * variation, 3), 0.02, None)
        return tuple(float(x) for x in w / np.linalg.norm(w) * np.linalg.norm(v))  # type: ignore[return-value]

    base = float(np.clip(rng.normal(243.0, 2.5 * variation), 236.0, 250.0))
    tint = rng.normal(0.0, 1.2 * variation, 3)
    return Stain(
        h_od=jitter(_H_OD),
        e_od=jitter(_E_OD),
        h_gain=float(np.exp(rng.normal(0.0, 0.15 * variation))),
        e_gain=float(np.exp(rng.normal(0.0, 0.15 * variation))),
        illuminant=tuple(float(np.clip(base + t, 230.0, 252.0)) for t in tint),  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class TissueStyle:
    """Everything that is fixed over one slide or patch: noise key, stain, fibre direction."""

    key: int
    stain: Stain
    fibre_angle: float  # radians, mean direction of stroma fibres

    @staticmethod
    def random(rng: np.random.Generator, stain_variation: float = 1.0) -> TissueStyle:
        """A style with its own nuclei/noise key, stain and fibre direction."""
        return TissueStyle(
            key=int(rng.integers(0, 2**62)),
            stain=random_stain(rng, stain_variation),
            fibre_angle=float(rng.uniform(0.0, math.pi)),
        )


# --- nuclei -----------------------------------------------------------------------------

_CELL_UM = 64.0  # nuclei are drawn per cell of this side, one random stream per cell
_CLUSTER_REACH_UM = 24.0  # TE cluster members lie within this distance of their centre
_NUCLEUS_REACH_UM = 10.0  # no nucleus extends further than this from its centre

# nucleus kinds
_VESICULAR, _SPECK, _LYMPH, _SPINDLE = 0, 1, 2, 3
# seed table columns
_Y, _X, _KIND, _OWNER, _A, _B, _THETA, _H, _H2, _NY, _NX, _NR = range(12)
_NCOL = 12


def _seed_rows(gen: np.random.Generator, y: np.ndarray, x: np.ndarray, kind: int, owner: int) -> np.ndarray:
    """Seed table rows for nuclei of one kind at (y, x) µm, with random shape and stain."""
    n = len(y)
    rows = np.zeros((n, _NCOL), np.float64)
    rows[:, _Y], rows[:, _X], rows[:, _KIND], rows[:, _OWNER] = y, x, kind, owner
    rows[:, _THETA] = gen.uniform(0.0, math.pi, n)
    if kind == _VESICULAR:  # large pale nucleus, dark rim, nucleolus
        a = gen.uniform(3.6, 6.0, n)
        rows[:, _A], rows[:, _B] = a, a / gen.uniform(1.0, 1.5, n)
        rows[:, _H] = gen.uniform(0.75, 1.05, n)  # rim
        rows[:, _H2] = gen.uniform(0.26, 0.42, n)  # nucleoplasm
        rows[:, _NY], rows[:, _NX] = gen.normal(0.0, 0.25, (2, n)) * rows[:, _B]
        rows[:, _NR] = gen.uniform(0.55, 1.0, n)
    elif kind == _SPECK:  # karyorrhectic debris
        a = gen.uniform(0.45, 1.6, n)
        rows[:, _A], rows[:, _B] = a, a / gen.uniform(1.0, 2.0, n)
        rows[:, _H] = gen.uniform(0.75, 1.35, n)
    elif kind == _LYMPH:  # small, round, dense
        a = gen.uniform(2.5, 3.4, n)
        rows[:, _A], rows[:, _B] = a, a / gen.uniform(1.0, 1.2, n)
        rows[:, _H] = gen.uniform(1.1, 1.55, n)
    else:  # _SPINDLE fibroblast, oriented along the fibres later
        rows[:, _A] = gen.uniform(4.5, 8.5, n)
        rows[:, _B] = gen.uniform(0.9, 1.6, n)
        rows[:, _H] = gen.uniform(0.8, 1.2, n)
    return rows


def _cell_seeds(key: int, iy: int, ix: int) -> np.ndarray:
    """All candidate nuclei of one lattice cell (every class), before the class map is applied."""
    gen = np.random.default_rng([key, 7, iy + _OFFSET, ix + _OFFSET])
    c, area = _CELL_UM, _CELL_UM * _CELL_UM
    y0, x0 = iy * c, ix * c
    parts = []

    def uniform(density_per_um2: float) -> tuple[np.ndarray, np.ndarray]:
        n = gen.poisson(density_per_um2 * area)
        return y0 + gen.uniform(0, c, n), x0 + gen.uniform(0, c, n)

    # TE: nests (Neyman–Scott clusters) plus scattered cells
    n_cl = gen.poisson(area / 40.0**2)
    cy, cx = y0 + gen.uniform(0, c, n_cl), x0 + gen.uniform(0, c, n_cl)
    sizes = gen.poisson(11.0, n_cl)
    off = np.clip(gen.normal(0.0, 8.0, (2, int(sizes.sum()))), -_CLUSTER_REACH_UM, _CLUSTER_REACH_UM)
    ty, tx = np.repeat(cy, sizes) + off[0], np.repeat(cx, sizes) + off[1]
    sy, sx = uniform(1 / 900.0)
    parts.append(_seed_rows(gen, np.concatenate([ty, sy]), np.concatenate([tx, sx]), _VESICULAR, TE))
    parts.append(_seed_rows(gen, *uniform(1 / 28.0), _SPECK, NEC))
    parts.append(_seed_rows(gen, *uniform(1 / 48.0), _LYMPH, LYM))
    parts.append(_seed_rows(gen, *uniform(1 / 380.0), _SPINDLE, TAS))
    parts.append(_seed_rows(gen, *uniform(1 / 1500.0), _LYMPH, TAS))  # a few infiltrating lymphocytes
    return np.concatenate(parts)


def _seeds_in(key: int, y0_um: float, x0_um: float, y1_um: float, x1_um: float) -> np.ndarray:
    """Candidate nuclei with centres in [y0, y1) × [x0, x1) µm."""
    r = _CLUSTER_REACH_UM
    cells = [
        _cell_seeds(key, iy, ix)
        for iy in range(math.floor((y0_um - r) / _CELL_UM), math.floor((y1_um + r) / _CELL_UM) + 1)
        for ix in range(math.floor((x0_um - r) / _CELL_UM), math.floor((x1_um + r) / _CELL_UM) + 1)
    ]
    s = np.concatenate(cells)
    keep = (s[:, _Y] >= y0_um) & (s[:, _Y] < y1_um) & (s[:, _X] >= x0_um) & (s[:, _X] < x1_um)
    return s[keep]


# --- fibres -----------------------------------------------------------------------------

_FIBRE_TEXEL_UM = 0.5
_FIBRE_TEX_PX = 512  # periodic texture, 256 µm
_FIBRE_VARIANTS = 8  # styles share these few textures (cached); warp and direction still differ
_FIBRE_WARP_UM = 60.0  # amplitude of the fibre-bending displacement
_FIBRE_WARP_SPACING_UM = 100.0  # scale of the fibre bends


@lru_cache(maxsize=16)
def _fibre_texture(key: int, mpp: float) -> np.ndarray:
    """Periodic anisotropic noise (streaks along axis 1), low-passed for ``mpp``, unit std."""
    n = _FIBRE_TEX_PX
    gen = np.random.default_rng([key, 11])
    white = gen.standard_normal((n, n))
    k = np.fft.fftfreq(n, d=_FIBRE_TEXEL_UM) * 2 * math.pi  # rad/µm
    kv, ku = np.meshgrid(k, k, indexing="ij")
    sigma_along, sigma_across = 7.0, 0.9
    blur = max(0.5 * mpp, 0.0)
    filt = np.exp(-0.5 * ((ku * sigma_along) ** 2 + (kv * sigma_across) ** 2) - 0.5 * (blur**2) * (ku**2 + kv**2))
    tex = np.fft.ifft2(np.fft.fft2(white) * filt).real
    tex = (tex - tex.mean()) / (tex.std() + 1e-9)
    return tex.astype(np.float32)


# --- rendering --------------------------------------------------------------------------

# per class: background haematoxylin/eosin concentration, and amplitudes of the cell-scale
# mottle and the fine grain (relative); index 0 = glass
_BASE_H = np.array([0.0, 0.15, 0.06, 0.20, 0.05], np.float32)
_BASE_E = np.array([0.0, 0.22, 0.25, 0.15, 0.30], np.float32)
_MOTTLE = np.array([0.0, 0.20, 0.22, 0.18, 0.10], np.float32)
_GRAIN = np.array([0.0, 0.10, 0.30, 0.12, 0.08], np.float32)
_TAS_E_LO, _TAS_E_HI = 0.17, 0.52
_PIXEL_NOISE = 2.2  # RGB units, after averaging to the output resolution

LabelAt = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _render_core(
    style: TissueStyle, label_at: LabelAt, y0_um: float, x0_um: float, shape_hw: tuple[int, int], mpp: float
) -> np.ndarray:
    """Noise-free float32 RGB of a window whose pixel (0, 0) starts at (y0, x0) µm."""
    h, w = shape_hw
    pad = int(math.ceil(_NUCLEUS_REACH_UM / mpp)) + 1
    ys_pad = y0_um + (np.arange(-pad, h + pad) + 0.5) * mpp
    xs_pad = x0_um + (np.arange(-pad, w + pad) + 0.5) * mpp
    label_pad = label_at(ys_pad, xs_pad).astype(np.intp)
    label = label_pad[pad : pad + h, pad : pad + w]
    ys, xs = ys_pad[pad : pad + h], xs_pad[pad : pad + w]
    present = np.bincount(label.ravel(), minlength=5)
    key = style.key
    stain = style.stain
    if present[GLASS] == h * w and not (label_pad > 0).any():  # only glass: no fields, no nuclei
        return np.broadcast_to(np.asarray(stain.illuminant, np.float32), (h, w, 3)).copy()

    # background concentrations with cell-scale mottle, fine grain and regional variation
    mottle = NoiseField(key, 21, 4.0).grid(ys, xs)
    grain = NoiseField(key, 22, 1.1).grid(ys, xs)
    regional = NoiseField(key, 23, 160.0).grid(ys, xs)
    tex = 1.0 + _MOTTLE[label] * mottle + _GRAIN[label] * grain
    hc = _BASE_H[label] * tex
    ec = _BASE_E[label] * tex
    if present[TAS]:
        sel = label == TAS
        yy, xx = np.nonzero(sel)
        warp = NoiseField(key, 24, _FIBRE_WARP_SPACING_UM).grid(ys, xs)[sel] * _FIBRE_WARP_UM
        ca, sa = math.cos(style.fibre_angle), math.sin(style.fibre_angle)
        py, px = ys[yy], xs[xx]
        along = px * ca + py * sa
        across = -px * sa + py * ca + warp
        fibre_tex = _fibre_texture(key % _FIBRE_VARIANTS, round(mpp, 4))
        f = ndi.map_coordinates(
            fibre_tex, [across / _FIBRE_TEXEL_UM, along / _FIBRE_TEXEL_UM], order=1, mode="grid-wrap",
            output=np.float32,
        )
        fibre = 1.0 / (1.0 + np.exp(-1.8 * f))
        ec[sel] = (_TAS_E_LO + (_TAS_E_HI - _TAS_E_LO) * fibre) * (1.0 + 0.08 * grain[sel])
    if present[NEC]:  # patchy: denser and paler zones of debris
        sel = label == NEC
        patch = NoiseField(key, 25, 12.0).grid(ys, xs)[sel]
        ec[sel] *= 1.0 + 0.22 * patch
        # basophilic haze of nuclear dust
        hc[sel] += 0.10 * np.clip(NoiseField(key, 26, 6.0).grid(ys, xs)[sel] + 0.3, 0.0, None)
    regional_gain = 1.0 + 0.12 * regional

    # nuclei: nearest seed per pixel (EDT), elliptical shape test in µm
    seeds = _seeds_in(key, ys_pad[0] - 0.5 * mpp, xs_pad[0] - 0.5 * mpp, ys_pad[-1] + 0.5 * mpp,
                      xs_pad[-1] + 0.5 * mpp)
    siy = np.clip(((seeds[:, _Y] - ys_pad[0]) / mpp + 0.5).astype(np.intp), 0, len(ys_pad) - 1)
    six = np.clip(((seeds[:, _X] - xs_pad[0]) / mpp + 0.5).astype(np.intp), 0, len(xs_pad) - 1)
    keep = label_pad[siy, six] == seeds[:, _OWNER]  # a nucleus belongs to its class's regions
    seeds, siy, six = seeds[keep], siy[keep], six[keep]
    if len(seeds):
        spindle = seeds[:, _KIND] == _SPINDLE
        if spindle.any():  # along the local fibre direction: tangent of the warped level sets
            warp_field = NoiseField(key, 24, _FIBRE_WARP_SPACING_UM)
            gy, gx = warp_field.points(seeds[spindle, _Y], seeds[spindle, _X], gradient=True)
            ca, sa = math.cos(style.fibre_angle), math.sin(style.fibre_angle)
            dvdx, dvdy = -sa + _FIBRE_WARP_UM * gx, ca + _FIBRE_WARP_UM * gy
            seeds[spindle, _THETA] = np.arctan2(-dvdx, dvdy)
        not_seed = np.ones(label_pad.shape, bool)
        not_seed[siy, six] = False
        seed_id = np.zeros(label_pad.shape, np.int32)
        seed_id[siy, six] = np.arange(len(seeds), dtype=np.int32)
        near = ndi.distance_transform_edt(not_seed, return_distances=False, return_indices=True)
        nid = seed_id[near[0, pad : pad + h, pad : pad + w], near[1, pad : pad + h, pad : pad + w]]
        del near
        sf = seeds.astype(np.float32)
        dy = ys.astype(np.float32)[:, None] - sf[nid, _Y]
        dx = xs.astype(np.float32)[None, :] - sf[nid, _X]
        th = sf[nid, _THETA]
        ct, st = np.cos(th), np.sin(th)
        u = dx * ct + dy * st
        v = -dx * st + dy * ct
        a, b = sf[nid, _A], sf[nid, _B]
        r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        alpha = np.clip((1.0 - r) * b / mpp + 0.5, 0.0, 1.0)  # ~1 px anti-aliased edge
        alpha *= label > 0
        kind = seeds[:, _KIND].astype(np.int8)[nid]
        hn = sf[nid, _H].copy()
        en = np.full(hn.shape, 0.10, np.float32)
        ves = kind == _VESICULAR
        if ves.any():
            rim = np.clip((r - 0.68) / 0.2, 0.0, 1.0)
            hv = sf[nid, _H2] * (1.0 + 0.3 * grain) + (hn - sf[nid, _H2]) * rim
            nd = np.sqrt((dy - sf[nid, _NY]) ** 2 + (dx - sf[nid, _NX]) ** 2)
            nucleolus = np.clip((sf[nid, _NR] - nd) / mpp + 0.5, 0.0, 1.0)
            hv = hv + nucleolus * 0.7
            hn = np.where(ves, hv, hn)
            en = np.where(ves, 0.08 + 0.25 * nucleolus, en)
        speck = kind == _SPECK
        if speck.any():  # fragmented: holes where the grain is low
            alpha = np.where(speck, alpha * np.clip(grain * 2.0 + 1.2, 0.0, 1.0), alpha)
            en = np.where(speck, 0.2, en)
        lymph = kind == _LYMPH
        if lymph.any():
            hn = np.where(lymph, hn * (1.0 + 0.07 * grain), hn)
        hc = hc * (1.0 - alpha) + hn * alpha
        ec = ec * (1.0 - alpha) + en * alpha

    # stain
    hc *= stain.h_gain * regional_gain
    ec *= stain.e_gain * (2.0 - regional_gain)
    # small non-stain absorption in tissue (unspecific background)
    resid = (label > 0).astype(np.float32) * 0.015
    rgb = np.empty((h, w, 3), np.float32)
    for ch in range(3):
        od = hc * stain.h_od[ch] + ec * stain.e_od[ch] + resid
        rgb[..., ch] = stain.illuminant[ch] * np.exp(-_LN10 * od)
    return rgb


def render(
    style: TissueStyle,
    label_at: LabelAt,
    y0_um: float,
    x0_um: float,
    shape_hw: tuple[int, int],
    mpp: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Render an (H, W, 3) uint8 window at ``mpp`` µm/px whose top-left corner is at (y0, x0) µm.

    ``label_at(ys_um, xs_um)`` gives the class map on a grid of pixel-centre coordinates.
    Coarser than ``MAX_RENDER_MPP`` the window is rendered ``f``× finer and averaged, so
    nuclei keep their size and the average colour is right at every resolution. Large
    windows are rendered in chunks to bound memory. Only the pixel noise uses ``rng``.
    """
    h, w = shape_hw
    f = max(1, math.ceil(mpp / MAX_RENDER_MPP - 1e-9))
    rmpp = mpp / f
    step = max(1, _CHUNK_PX // f)
    out = np.empty((h, w, 3), np.uint8)
    for cy in range(0, h, step):
        for cx in range(0, w, step):
            ch, cw = min(step, h - cy), min(step, w - cx)
            rgb = _render_core(style, label_at, y0_um + cy * mpp, x0_um + cx * mpp, (ch * f, cw * f), rmpp)
            if f > 1:
                rgb = rgb.reshape(ch, f, cw, f, 3).mean(axis=(1, 3))
            rgb += rng.standard_normal(rgb.shape, dtype=np.float32) * _PIXEL_NOISE
            np.clip(rgb, 0.0, 255.0, out=rgb)
            out[cy : cy + ch, cx : cx + cw] = (rgb + 0.5).astype(np.uint8)
    return out


def array_label_at(label: np.ndarray, mpp: float, y0_um: float = 0.0, x0_um: float = 0.0) -> LabelAt:
    """``label_at`` for a class map whose pixels are ``mpp`` µm, starting at (y0, x0) µm; edges extend."""
    hl, wl = label.shape

    def label_at(ys_um: np.ndarray, xs_um: np.ndarray) -> np.ndarray:
        iy = np.clip(np.floor((ys_um - y0_um) / mpp).astype(np.intp), 0, hl - 1)
        ix = np.clip(np.floor((xs_um - x0_um) / mpp).astype(np.intp), 0, wl - 1)
        return label[np.ix_(iy, ix)]

    return label_at


def _linear_matrix(pos: np.ndarray, first: int, n: int) -> np.ndarray:
    """(len(pos), n) linear-interpolation weights; ``pos`` in node units, clamped to the nodes."""
    pos = np.clip(pos, first, first + n - 1)
    i0 = np.minimum(np.floor(pos).astype(np.intp), first + n - 2) if n > 1 else np.full(len(pos), first)
    t = (pos - i0).astype(np.float32)
    m = np.zeros((len(pos), n), np.float32)
    rows = np.arange(len(pos))
    m[rows, i0 - first] = 1.0 - t
    if n > 1:
        m[rows, i0 - first + 1] += t
    return m


def smooth_label_at(label: np.ndarray, mpp: float) -> LabelAt:
    """``label_at`` for a coarse class map of ``mpp`` µm pixels with smooth class boundaries.

    Each class's indicator is interpolated linearly between pixel centres and the class
    with the highest value wins, so a finer rendering has smooth outlines instead of
    ``mpp``-sized steps, while every coarse pixel centre keeps exactly its own class.
    """
    hl, wl = label.shape

    def label_at(ys_um: np.ndarray, xs_um: np.ndarray) -> np.ndarray:
        py, px = ys_um / mpp - 0.5, xs_um / mpp - 0.5
        r0 = int(np.clip(np.floor(py.min()), 0, hl - 1))
        r1 = int(np.clip(np.floor(py.max()) + 2, r0 + 1, hl))
        c0 = int(np.clip(np.floor(px.min()), 0, wl - 1))
        c1 = int(np.clip(np.floor(px.max()) + 2, c0 + 1, wl))
        sub = label[r0:r1, c0:c1]
        classes = np.unique(sub)
        if len(classes) == 1:
            return np.full((len(ys_um), len(xs_um)), classes[0], label.dtype)
        wy, wx = _linear_matrix(py, r0, r1 - r0), _linear_matrix(px, c0, c1 - c0)
        best = (wy @ (sub == classes[0]).astype(np.float32)) @ wx.T
        out = np.full(best.shape, classes[0], label.dtype)
        better = np.empty(best.shape, bool)
        for c in classes[1:]:
            score = (wy @ (sub == c).astype(np.float32)) @ wx.T
            np.greater(score, best, out=better)
            np.maximum(best, score, out=best)
            np.copyto(out, c, where=better)
        return out

    return label_at


def synthesize_region(
    label: np.ndarray,
    rng: np.random.Generator,
    mpp: float,
    n_classes: int = 4,
    style: TissueStyle | None = None,
) -> np.ndarray:
    """H&E-like RGB (H, W, 3) uint8 for a class map (H, W) uint8 at ``mpp`` µm/px.

    0 = glass (near white), 1 TE, 2 NEC, 3 LYM, 4 TAS. A fresh stain and texture style is
    drawn from ``rng`` unless ``style`` is given (pass one style to render several regions
    of the same "slide").
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be a 2-D class map, got shape {label.shape}")
    if not 1 <= n_classes <= len(CLASS_NAMES):
        raise ValueError(f"n_classes must be in 1..{len(CLASS_NAMES)}, got {n_classes}")
    if label.size and int(label.max()) > n_classes:
        raise ValueError(f"label has class {int(label.max())} > n_classes={n_classes}")
    if not mpp > 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    if style is None:
        style = TissueStyle.random(rng)
    lab = label.astype(np.uint8, copy=False)
    return render(style, array_label_at(lab, mpp), 0.0, 0.0, lab.shape, mpp, rng)


# --- class maps -------------------------------------------------------------------------

# relative region scale per class: lymphocyte aggregates are smaller, stroma bands longer
_CLASS_SCALE = (1.0, 0.9, 0.65, 0.8)


def random_label_map(
    shape_hw: tuple[int, int],
    rng: np.random.Generator,
    mpp: float,
    n_classes: int = 4,
    tissue_fraction: float = 0.6,
    region_scale_um: float = 300.0,
) -> np.ndarray:
    """Class map (H, W) uint8 at ``mpp`` µm/px: irregular smooth class regions (1..n_classes)
    inside a tissue piece of irregular outline covering ≈ ``tissue_fraction`` of the area,
    glass (0) elsewhere, with a few small holes and loose specks of tissue.

    ``region_scale_um`` is the typical size of one class region.
    """
    h, w = (int(s) for s in shape_hw)
    if h <= 0 or w <= 0:
        raise ValueError(f"shape_hw must be positive, got {shape_hw}")
    if not 1 <= n_classes <= len(CLASS_NAMES):
        raise ValueError(f"n_classes must be in 1..{len(CLASS_NAMES)}, got {n_classes}")
    key = int(rng.integers(0, 2**62))
    ys, xs = (np.arange(h) + 0.5) * mpp, (np.arange(w) + 0.5) * mpp
    h_um, w_um = h * mpp, w * mpp

    # classes: argmax of smooth fields with small random biases
    bias = rng.uniform(-0.15, 0.15, n_classes)
    best = np.full((h, w), -np.inf, np.float32)
    label = np.zeros((h, w), np.uint8)
    for c in range(n_classes):
        field = NoiseField(key, 100 + c, region_scale_um * _CLASS_SCALE[c]).grid(ys, xs) + bias[c]
        better = field > best
        best = np.where(better, field, best)
        label[better] = c + 1
    del best
    if tissue_fraction >= 1.0:
        return label

    # tissue: smooth field plus a pull towards the centre, thresholded at the wanted fraction
    scale = 0.35 * min(h_um, w_um)
    t = NoiseField(key, 1, scale).grid(ys, xs) + 0.35 * NoiseField(key, 3, scale / 4.0).grid(ys, xs)
    ry = ((ys - h_um / 2) / (h_um / 2)) ** 2
    rx = ((xs - w_um / 2) / (w_um / 2)) ** 2
    t -= (1.2 * (ry[:, None] + rx[None, :])).astype(np.float32)
    sample = t[:: max(1, h // 512), :: max(1, w // 512)]
    thr = float(np.quantile(sample, 1.0 - max(tissue_fraction, 0.0))) if tissue_fraction > 0 else np.inf
    tissue = t > thr
    # small holes inside and loose specks just outside the outline
    fine = NoiseField(key, 2, max(region_scale_um / 5.0, 4.0 * mpp)).grid(ys, xs)
    tissue &= ~(fine > 2.5)
    tissue |= (t > thr - 0.4) & (fine < -2.4)
    label[~tissue] = GLASS
    return label
