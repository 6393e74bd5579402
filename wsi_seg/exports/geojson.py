"""Export a segmentation result's class regions as GeoJSON polygons that QuPath imports.

Coordinates are slide level-0 pixels with the origin at the slide's top-left corner
(QuPath's convention): mask pixel (y, x) of the traced level covers level-0 pixels
[x·s, (x+1)·s), s = mpp of that level / slide mpp. Each connected region of a class
(4-connected: pixels touching only at a corner are separate regions) becomes one
``Polygon`` Feature (holes included) with properties ``{"objectType": "annotation",
"classification": {"name": "TE", "color": [205, 51, 51]}}``.

How it streams
--------------
The mask level is read block by block (whole chunks plus a one-pixel halo). Boundaries
are traced exactly along pixel edges, so a region's polygon area is its pixel count.
Each block owns the pixel corners inside it and links the boundary edges that meet
there; it hands back rings that close inside it and open chains that leave through its
border. Chains are joined across blocks by the pixel edge they cross, so a region
crossing any number of chunk borders comes out as one polygon, with no seam. A polygon
is written as soon as its exterior ring closes: in raster order of blocks an exterior
closes no earlier than every ring inside it, so its holes are known by then (a hole goes
to the smallest exterior of its class around a pixel next to it).

What is bounded: memory holds one block (a few MB) plus the boundaries of regions that
still cross the frontier between read and unread blocks, and the holes of exteriors not
yet closed. That grows with the length of those boundaries, never with the slide's area
in pixels; finished polygons go straight to the file. (A region spanning the whole slide
is held until its last block, as its polygon has to be.)

Trade-offs: exact pixel-edge tracing (numpy only) has no marching-squares corner cutting
and no block seams, at the price of staircase outlines. Those are simplified per polygon
after tracing, with shapely's topology-preserving Douglas-Peucker, so every polygon stays
valid (no self-intersections, holes stay inside). Neighbouring classes are simplified
independently, so a shared border may gap or overlap by up to the tolerance;
``simplify_px=0`` gives the exact pixel outlines and needs no shapely.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from wsi_seg.errors import ConfigError, OutputError, ResultError
from wsi_seg.result.format import partial_path
from wsi_seg.result.reader import Result

log = logging.getLogger(__name__)

DEFAULT_SIMPLIFY_MASK_PX = 2.0  # default tolerance, in pixels of the traced level
MIN_BLOCK_PX = 1024  # blocks are whole chunks, at least this many pixels a side
COORD_DECIMALS = 3

# Directions of boundary edges (x right, y down). The region lies on the left of each
# edge, so exterior rings have a positive shoelace area (counter-clockwise as numbers,
# RFC 7946) and holes a negative one.
R, D, L, U = 0, 1, 2, 3
_M = 1 << 26  # stride of (y, x) keys: masks up to 67 M px a side; keys fit int64

Chain = tuple[int, np.ndarray, int]  # (head edge key, vertices (n, 2) x, y, tail edge key)


def _corner_table() -> tuple[np.ndarray, np.ndarray]:
    """For each 2×2 code (nw 1, ne 2, se 4, sw 8): is the corner a polygon vertex, and its
    (incoming, outgoing) direction pairs, two at a saddle (else -1)."""
    is_vertex = np.zeros(16, bool)
    pairs = np.full((16, 2, 2), -1, np.int64)
    for code in range(16):
        nw, ne, se, sw = (bool(code & bit) for bit in (1, 2, 4, 8))
        ins: list[int] = []  # directions of the boundary edges entering and leaving the corner
        outs: list[int] = []
        if nw != ne:
            (ins if nw else outs).append(D if nw else U)
        if sw != se:
            (outs if sw else ins).append(D if sw else U)
        if nw != sw:
            (ins if sw else outs).append(R if sw else L)
        if ne != se:
            (outs if se else ins).append(R if se else L)
        if len(ins) == 2:  # saddle: turn left, so diagonal pixels stay apart
            for k, d in enumerate(sorted(ins)):
                assert (d + 1) % 4 in outs
                pairs[code, k] = (d, (d + 1) % 4)
            is_vertex[code] = True
        elif ins and ins[0] != outs[0]:
            pairs[code, 0] = (ins[0], outs[0])
            is_vertex[code] = True
    return is_vertex, pairs


_IS_VERTEX, _PAIRS = _corner_table()


def _trace_block(pb: np.ndarray, x0: int, y0: int, nvx: int, nvy: int) -> tuple[list[np.ndarray], list[Chain]]:
    """Boundaries of one class in one block.

    ``pb``: bool (≥ nvy + 1, ≥ nvx + 1), pixel (y0 - 1 + i, x0 - 1 + j) at [i, j]. The block
    owns the corners x0 ≤ x < x0 + nvx, y0 ≤ y < y0 + nvy. Returns rings closed inside the
    block and chains that enter and leave through its border, as (n, 2) int64 x, y vertices.
    """
    u = pb.view(np.uint8)
    code = u[:nvy, :nvx] | (u[:nvy, 1 : nvx + 1] << 1) | (u[1 : nvy + 1, 1 : nvx + 1] << 2) | (u[1 : nvy + 1, :nvx] << 3)
    jj, ii = np.nonzero(_IS_VERTEX[code])
    vcode = code[jj, ii]
    vx, vy = ii.astype(np.int64) + x0, jj.astype(np.int64) + y0
    hkey = vy * _M + vx  # row-major order: already sorted
    vorder = np.lexsort((vy, vx))
    vkey = (vx * _M + vy)[vorder]

    saddle = np.nonzero(_PAIRS[vcode, 1, 0] >= 0)[0]
    node_v = np.concatenate([np.arange(len(vx)), saddle])
    node_in = np.concatenate([_PAIRS[vcode, 0, 0], _PAIRS[vcode[saddle], 1, 0]])
    node_out = np.concatenate([_PAIRS[vcode, 0, 1], _PAIRS[vcode[saddle], 1, 1]])
    node_order = np.argsort(hkey[node_v] * 4 + node_in)  # nodes keyed by corner and incoming direction
    node_key_sorted, n_nodes = (hkey[node_v] * 4 + node_in)[node_order], len(node_v)

    # boundary edges entering through the border: start corner (outside) and direction
    rows, cols = np.arange(nvy, dtype=np.int64), np.arange(nvx, dtype=np.int64)
    xe, ye = x0 + nvx, y0 + nvy
    entries = [
        (np.full(nvy, x0 - 1), y0 + rows, R, pb[1 : nvy + 1, 0] & ~pb[:nvy, 0]),
        (np.full(nvy, xe), y0 + rows, L, pb[:nvy, nvx] & ~pb[1 : nvy + 1, nvx]),
        (x0 + cols, np.full(nvx, y0 - 1), D, pb[0, :nvx] & ~pb[0, 1 : nvx + 1]),
        (x0 + cols, np.full(nvx, ye), U, pb[nvy, 1 : nvx + 1] & ~pb[nvy, :nvx]),
    ]
    sx = np.concatenate([vx[node_v]] + [ex[m] for ex, _, _, m in entries])
    sy = np.concatenate([vy[node_v]] + [ey[m] for _, ey, _, m in entries])
    sd = np.concatenate([node_out] + [np.full(int(m.sum()), d) for _, _, d, m in entries])

    # the next vertex along each outgoing run, or the last owned corner before it leaves
    found = np.full(len(sx), -1, np.int64)
    last_x, last_y = sx.copy(), sy.copy()
    for d in (R, L, D, U):
        m = np.nonzero(sd == d)[0]
        if not len(m):
            continue
        px, py = sx[m], sy[m]
        if d in (R, L):
            q = py * _M + px
            idx = np.searchsorted(hkey, q, "right") if d == R else np.searchsorted(hkey, q, "left") - 1
            ok = (idx >= 0) & (idx < len(hkey))
            ok[ok] = vy[idx[ok]] == py[ok]
            found[m[ok]] = idx[ok]
            last_x[m[~ok]] = xe - 1 if d == R else x0
        else:
            q = px * _M + py
            idx = np.searchsorted(vkey, q, "right") if d == D else np.searchsorted(vkey, q, "left") - 1
            ok = (idx >= 0) & (idx < len(vkey))
            ok[ok] = vx[vorder[idx[ok]]] == px[ok]
            found[m[ok]] = vorder[idx[ok]]
            last_y[m[~ok]] = ye - 1 if d == D else y0
    has = found >= 0
    target = hkey[found[has]] * 4 + sd[has]
    pos = np.searchsorted(node_key_sorted, target)
    if np.any(pos >= n_nodes) or np.any(node_key_sorted[np.minimum(pos, n_nodes - 1)] != target):
        raise RuntimeError("boundary tracing lost an edge")  # a bug, never bad input
    succ = np.full(len(sx), -1, np.int64)
    succ[has] = node_order[pos]
    exit_key = (last_y * _M + last_x) * 4 + sd  # edges are keyed by start corner and direction

    xy = np.stack([vx[node_v], vy[node_v]], 1)
    succ_l, exit_l = succ.tolist(), exit_key.tolist()
    visited = bytearray(n_nodes)
    chains: list[Chain] = []
    for e in range(n_nodes, len(sx)):
        path, k, last = [], succ_l[e], e
        while k >= 0:
            path.append(k)
            visited[k] = 1
            last, k = k, succ_l[k]
        chains.append((int((sy[e] * _M + sx[e]) * 4 + sd[e]), xy[path], exit_l[last]))
    rings: list[np.ndarray] = []
    for start in range(n_nodes):
        if visited[start]:
            continue
        path, k = [], start
        while not visited[k]:
            path.append(k)
            visited[k] = 1
            k = succ_l[k]
        rings.append(xy[path])
    return rings, chains


class _Joiner:
    """Joins open chains of one class across blocks by the edge where they meet."""

    def __init__(self) -> None:
        self.by_head: dict[int, list[Any]] = {}
        self.by_tail: dict[int, list[Any]] = {}

    def add(self, head: int, piece: np.ndarray, tail: int) -> np.ndarray | None:
        """Add a chain; returns the ring's vertices if it closes one."""
        chain = [head, deque([piece]), tail]
        prev = self.by_tail.pop(head, None)
        if prev is not None:
            del self.by_head[prev[0]]
            chain = [prev[0], _merge(prev[1], chain[1]), tail]
        if chain[0] == chain[2]:
            return np.concatenate(list(chain[1]))
        nxt = self.by_head.pop(chain[2], None)
        if nxt is not None:
            del self.by_tail[nxt[2]]
            chain = [chain[0], _merge(chain[1], nxt[1]), nxt[2]]
            if chain[0] == chain[2]:
                return np.concatenate(list(chain[1]))
        self.by_head[chain[0]] = chain
        self.by_tail[chain[2]] = chain
        return None

    def __len__(self) -> int:
        return len(self.by_head)


def _merge(a: deque, b: deque) -> deque:
    """a followed by b, extending the longer one."""
    if len(a) >= len(b):
        a.extend(b)
        return a
    b.extendleft(reversed(a))
    return b


def _split_pinches(ring: np.ndarray) -> list[np.ndarray]:
    """Split a ring where it touches itself (at saddle corners) into simple rings."""
    keys = (ring[:, 1] * _M + ring[:, 0]).tolist()
    out, stack, where = [], [], {}
    for i, k in enumerate(keys):
        j = where.get(k)
        if j is None:
            where[k] = len(stack)
            stack.append(i)
            continue
        out.append(ring[stack[j:]])
        for idx in stack[j + 1 :]:
            del where[keys[idx]]
        del stack[j + 1 :]
    out.append(ring[stack])
    return out


def _simple_rings(rings: list[np.ndarray]) -> list[np.ndarray]:
    """The rings, those that touch themselves split (vectorised check: most do not)."""
    if not rings:
        return []
    cat = np.concatenate(rings)
    ring_id = np.repeat(np.arange(len(rings)), [len(r) for r in rings])
    keys = cat[:, 1] * _M + cat[:, 0]
    order = np.lexsort((keys, ring_id))
    keys, ring_id = keys[order], ring_id[order]
    pinched = set(ring_id[1:][(keys[1:] == keys[:-1]) & (ring_id[1:] == ring_id[:-1])].tolist())
    if not pinched:
        return rings
    return [s for i, r in enumerate(rings) for s in (_split_pinches(r) if i in pinched else [r])]


def _areas2(rings: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Twice the signed shoelace areas (exact, integer vertices), and the first vertex offsets."""
    lens = np.array([len(r) for r in rings])
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    cat = np.concatenate(rings)
    nxt = np.arange(len(cat)) + 1
    nxt[starts + lens - 1] = starts
    return np.add.reduceat(cat[:, 0] * cat[nxt, 1] - cat[nxt, 0] * cat[:, 1], starts), starts


def _inner_points(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Centres of the region pixels next to rings' first edges (the region lies on the left)."""
    d = np.sign(second - first)
    return first + 0.5 * d + 0.5 * np.stack([-d[:, 1], d[:, 0]], 1)


def _contains(ring: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Even-odd test of points at pixel centres (never on the ring) against a pixel ring."""
    x1, y1 = ring[:, 0], ring[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    v = x1 == x2
    ex, ya, yb = x1[v], np.minimum(y1[v], y2[v]), np.maximum(y1[v], y2[v])
    inside = np.zeros(len(pts), bool)
    step = max(1, 2_000_000 // max(1, len(ex)))
    for s in range(0, len(pts), step):
        p = pts[s : s + step]
        cross = (ya < p[:, 1:2]) & (p[:, 1:2] < yb) & (p[:, 0:1] < ex)
        inside[s : s + step] = cross.sum(1) % 2 == 1
    return inside


Emit = Callable[[np.ndarray, int, list[tuple[np.ndarray, int]]], None]


class _Polygons:
    """Turns the closed rings of one class into polygons, handing each to ``emit`` as
    (exterior, twice its area, [(hole, twice its area), …])."""

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self.holes: dict[int, tuple[np.ndarray, int]] = {}  # pending: exterior not closed yet
        self.ids = np.empty(0, np.int64)
        self.points = np.empty((0, 2))
        self._next_id = 0

    def add(self, rings: list[np.ndarray]) -> None:
        """The rings closed by one block, all at once: holes first, then the exteriors,
        smallest first (an exterior inside another closes no later than it)."""
        rings = _simple_rings(rings)
        a2, starts = _areas2(rings)
        is_hole = a2 < 0
        if is_hole.any():
            idx = np.nonzero(is_hole)[0]
            cat = np.concatenate(rings)
            ids = np.arange(self._next_id, self._next_id + len(idx))
            self._next_id += len(idx)
            self.holes.update({int(i): (rings[k], -int(a2[k])) for i, k in zip(ids, idx)})
            self.ids = np.concatenate([self.ids, ids])
            self.points = np.concatenate([self.points, _inner_points(cat[starts[idx]], cat[starts[idx] + 1])])
        ext = np.nonzero(~is_hole)[0]
        for k in ext[np.argsort(a2[ext], kind="stable")].tolist():
            self.emit(rings[k], int(a2[k]), self._claim(rings[k]) if len(self.ids) else [])

    def _claim(self, ext: np.ndarray) -> list[tuple[np.ndarray, int]]:
        (xmin, ymin), (xmax, ymax) = ext.min(0), ext.max(0)
        if xmax - xmin < 3 or ymax - ymin < 3:  # too small to hold a hole
            return []
        p = self.points
        near = np.nonzero((p[:, 0] > xmin) & (p[:, 0] < xmax) & (p[:, 1] > ymin) & (p[:, 1] < ymax))[0]
        if not len(near):
            return []
        hit = near[_contains(ext, p[near])]
        if not len(hit):
            return []
        keep = np.ones(len(self.ids), bool)
        keep[hit] = False
        claimed = [self.holes.pop(i) for i in self.ids[hit].tolist()]
        self.ids, self.points = self.ids[keep], self.points[keep]
        return claimed


@dataclass
class ClassSummary:
    """What was exported for one class; areas are of the traced (unsimplified) regions."""

    name: str
    color: tuple[int, int, int]
    polygons: int = 0
    area_um2: float = 0.0
    dropped: int = 0  # regions below min_area_um2
    holes_filled: int = 0  # holes below min_hole_um2

    def line(self) -> str:
        """e.g. ``TE: 12 polygons, 3.21 mm² (4 small regions dropped, 1 small hole filled)``."""
        extra = [_count(self.dropped, "small region") + " dropped"] if self.dropped else []
        extra += [_count(self.holes_filled, "small hole") + " filled"] if self.holes_filled else []
        tail = f" ({', '.join(extra)})" if extra else ""
        return f"{self.name}: {_count(self.polygons, 'polygon')}, {self.area_um2 / 1e6:.4g} mm²{tail}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@dataclass
class ExportSummary:
    """The result of :func:`export_geojson`."""

    out: Path
    level: int
    level0_px_per_mask_px: float
    classes: list[ClassSummary] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        return {c.name: c.polygons for c in self.classes}

    @property
    def area_um2(self) -> dict[str, float]:
        return {c.name: c.area_um2 for c in self.classes}

    def lines(self) -> list[str]:  # one per class
        return [c.line() for c in self.classes]


def _open_result(path: Path, level: int) -> tuple[Any, Result]:
    """The mask array of ``level`` and the result, or a ResultError naming the file."""
    result = Result.open(path)
    arr = result.mask(level)
    if arr.ndim != 2 or arr.dtype != np.uint8 or max(arr.shape) >= _M - 1:
        raise ResultError(f"{path}: mask level {level} is {arr.dtype} {arr.shape}, expected 2-D uint8 below {_M - 1} px a side")
    if not (result.provenance.slide.mpp or 0) > 0:
        raise ResultError(f"{path}: result lacks the slide's µm/px (provenance slide.mpp); cannot place polygons on the slide")
    return arr, result


def _read_padded(arr: Any, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Mask rows y0:y1, cols x0:x1 with a one-pixel halo; zeros outside the image."""
    h, w = arr.shape
    out = np.zeros((y1 - y0 + 2, x1 - x0 + 2), np.uint8)
    ys, ye, xs, xe = max(y0 - 1, 0), min(y1 + 1, h), max(x0 - 1, 0), min(x1 + 1, w)
    out[ys - y0 + 1 : ye - y0 + 1, xs - x0 + 1 : xe - x0 + 1] = arr[ys:ye, xs:xe]
    return out


def _select_classes(names: list[str], classes: list[str] | None, path: Path) -> list[int]:
    """Mask values (1..N) of the requested class names, all by default."""
    if classes is None:
        return list(range(1, len(names) + 1))
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise ConfigError(f"{path}: unknown class {', '.join(map(repr, unknown))}; the result has {', '.join(names)}")
    return [names.index(c) + 1 for c in dict.fromkeys(classes)]


def _require_shapely() -> Any:
    try:
        import shapely
    except ImportError as exc:
        raise ConfigError(
            "simplifying polygons needs shapely: pip install shapely (or pass --simplify 0 for exact pixel outlines)"
        ) from exc
    return shapely


def _rings_out(ext: np.ndarray, holes: list[np.ndarray], tol_px: float, scale: float) -> list[list[list[float]]]:
    """GeoJSON polygon rings (closed, exterior counter-clockwise) in level-0 px."""
    rings = [ext, *holes]
    if tol_px > 0:
        shapely = _require_shapely()
        poly = shapely.Polygon(ext, holes)
        simple = shapely.orient_polygons(shapely.simplify(poly, tol_px, preserve_topology=True))
        if not simple.is_empty and simple.geom_type == "Polygon":
            rings = [np.asarray(simple.exterior.coords)[:-1]] + [np.asarray(r.coords)[:-1] for r in simple.interiors]
    out = []
    for r in rings:
        r = np.round(np.asarray(r, float) * scale, COORD_DECIMALS)
        out.append(np.concatenate([r, r[:1]]).tolist())
    return out


class _FeatureWriter:
    """Streams Features into a GeoJSON FeatureCollection."""

    def __init__(self, f: TextIO) -> None:
        self.f = f
        self.n = 0
        f.write('{"type": "FeatureCollection", "features": [\n')

    def write(self, rings: list[list[list[float]]], name: str, color: tuple[int, int, int]) -> None:
        feature = {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": rings},
            "properties": {"objectType": "annotation", "classification": {"name": name, "color": list(color)}},
        }
        self.f.write((",\n" if self.n else "") + json.dumps(feature, separators=(",", ":")))
        self.n += 1

    def close(self) -> None:
        self.f.write("\n]}\n")


class _Emitter:
    """Filters, simplifies and writes the polygons of one class, counting them."""

    def __init__(self, writer: _FeatureWriter, summary: ClassSummary, um2_per_px: float, min_area_um2: float,
                 min_hole_um2: float, tol_px: float, scale: float) -> None:
        self.writer, self.summary = writer, summary
        self.um2_per_px2 = um2_per_px / 2  # areas arrive doubled
        self.min_area_um2, self.min_hole_um2 = min_area_um2, min_hole_um2
        self.tol_px, self.scale = tol_px, scale

    def __call__(self, ext: np.ndarray, a2: int, holes: list[tuple[np.ndarray, int]]) -> None:
        s = self.summary
        if (a2 - sum(ha for _, ha in holes)) * self.um2_per_px2 < self.min_area_um2:
            s.dropped += 1
            return
        kept = [(r, ha) for r, ha in holes if ha * self.um2_per_px2 >= self.min_hole_um2]
        s.holes_filled += len(holes) - len(kept)
        s.polygons += 1
        s.area_um2 += (a2 - sum(ha for _, ha in kept)) * self.um2_per_px2
        self.writer.write(_rings_out(ext, [r for r, _ in kept], self.tol_px, self.scale), s.name, s.color)


def _trace_mask(arr: Any, polygons: dict[int, _Polygons], block_hw: tuple[int, int], progress: bool) -> None:
    """Trace the classes ``polygons`` holds (mask values) block by block, in raster order."""
    from tqdm.auto import tqdm

    h, w = arr.shape
    bh, bw = block_hw
    joiners = {v: _Joiner() for v in polygons}
    blocks = ((y0, x0) for y0 in range(0, h, bh) for x0 in range(0, w, bw))
    n_blocks = math.ceil(h / bh) * math.ceil(w / bw)
    for y0, x0 in tqdm(blocks, total=n_blocks, desc="export", unit="block", disable=not progress, leave=False):
        y1, x1 = min(y0 + bh, h), min(x0 + bw, w)
        padded = _read_padded(arr, y0, y1, x0, x1)
        counts = np.bincount(padded.ravel(), minlength=256)
        nvx, nvy = x1 - x0 + (x1 == w), y1 - y0 + (y1 == h)  # the last blocks own the far edges
        for v, joiner in joiners.items():
            if counts[v] == 0 or counts[v] == padded.size:
                continue
            rings, chains = _trace_block(padded == v, x0, y0, nvx, nvy)
            for head, piece, tail in chains:
                ring = joiner.add(head, piece, tail)
                if ring is not None:
                    rings.append(ring)
            if rings:
                polygons[v].add(rings)
    for v, joiner in joiners.items():
        if len(joiner) or polygons[v].holes:  # cannot happen unless tracing is wrong
            raise RuntimeError(f"class {v}: {len(joiner)} open chains, {len(polygons[v].holes)} holes without exterior")


def export_geojson(
    result_path: str | Path,
    out_path: str | Path,
    level: int = 0,
    simplify_px: float | None = None,
    min_area_um2: float = 0.0,
    min_hole_um2: float | None = None,
    classes: list[str] | None = None,
    overwrite: bool = False,
    block_px: int | None = None,
    progress: bool = False,
) -> ExportSummary:
    """Write the class regions of a result as a QuPath GeoJSON FeatureCollection.

    ``level``: pyramid level of the mask to trace. ``simplify_px``: Douglas-Peucker tolerance
    in slide level-0 px (None: 2 pixels of the traced level; 0: exact pixel outlines).
    ``min_area_um2``: regions smaller than this are dropped; ``min_hole_um2`` (default: the
    same) holes smaller than this are filled. ``classes``: names to export (default all).
    ``block_px``: side of the blocks read at a time (default: whole chunks, ≥ 1024 px).
    The file is written to ``<out>.partial`` and renamed on success.
    """
    t0 = time.perf_counter()
    result_path, out_path = Path(result_path), Path(out_path)
    if out_path.exists() and not overwrite:
        raise OutputError(f"{out_path}: already exists; pass --overwrite to replace it")
    if level < 0 or (block_px is not None and block_px < 1):
        raise ConfigError(f"--level must be ≥ 0 and blocks ≥ 1 px, got level {level}, block {block_px}")
    if (simplify_px or 0) < 0 or min_area_um2 < 0 or (min_hole_um2 or 0) < 0:
        raise ConfigError("--simplify, --min-area-um2 and --min-hole-um2 must be ≥ 0")
    arr, result = _open_result(result_path, level)
    mpp = result.level_mpp(level)  # µm per traced pixel
    scale = mpp / result.provenance.slide.mpp  # level-0 px per traced pixel
    tol_px = DEFAULT_SIMPLIFY_MASK_PX if simplify_px is None else simplify_px / scale
    if tol_px > 0:
        _require_shapely()
    names, colors = list(result.class_names), list(result.class_colors)
    summaries = {v: ClassSummary(names[v - 1], colors[v - 1]) for v in _select_classes(names, classes, result_path)}
    ch, cw = arr.chunks
    block_hw = (block_px or ch * math.ceil(MIN_BLOCK_PX / ch), block_px or cw * math.ceil(MIN_BLOCK_PX / cw))

    part = partial_path(out_path)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        f = open(part, "w", encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{out_path}: cannot write ({exc.strerror or exc})") from exc
    try:
        with f:
            writer = _FeatureWriter(f)
            min_hole = min_area_um2 if min_hole_um2 is None else min_hole_um2
            polygons = {
                v: _Polygons(_Emitter(writer, s, mpp**2, min_area_um2, min_hole, tol_px, scale)) for v, s in summaries.items()
            }
            _trace_mask(arr, polygons, block_hw, progress)
            writer.close()
        os.replace(part, out_path)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise OutputError(f"{out_path}: cannot write ({exc.strerror or exc})") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    summary = ExportSummary(out_path, level, scale, list(summaries.values()), time.perf_counter() - t0)
    log.info("exported %d polygons from %s to %s in %.1f s", sum(summary.counts.values()), result_path, out_path, summary.seconds)
    return summary
