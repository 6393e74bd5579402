"""A napari screenshot of a corrected result: legend docked, a region painted and saved.

Segments a demo slide, opens it as ``wsi-seg view`` does (legend/summary and Corrections
docked), zooms onto the square where the model disagrees most with the slide's ground
truth, presses "Edit visible region", paints the true classes there (what a user does
with napari's brush), presses "Save corrections" (→ ``labels/corrected``), outlines the
region and saves the screenshot. Needs the napari extra and a display (a virtual one)::

    xvfb-run -a -s "-screen 0 1400x1000x24" python examples/napari_corrections_screenshot.py --out docs/napari_corrections.png
"""

from __future__ import annotations

import logging

import numpy as np
from _screenshot import (
    save_screenshot,
    screenshot_parser,
    segmented_demo,
    settle,
    workdir,
)

log = logging.getLogger("napari_corrections_screenshot")


def main(argv: list[str] | None = None) -> int:
    parser = screenshot_parser(__doc__.splitlines()[0], "docs/napari_corrections.png", 4096)
    parser.add_argument("--seed", type=int, default=3, help="demo slide seed")
    parser.add_argument("--region-px", type=int, default=448, help="side of the corrected square, result px")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from wsi_seg_napari._corrections import EDIT_KEY
    from wsi_seg_napari._corrections_widget import CorrectionsWidget
    from wsi_seg_napari.cli import open_viewer

    from wsi_seg.reports.evaluate_slide import ground_truth_at
    from wsi_seg.result.reader import Result

    demo, segmented = segmented_demo(workdir(args.workdir, "corrections"), args.size, args.seed, args.model,
                                     args.device)
    out = segmented.out
    result = Result.open(out)
    gt = ground_truth_at(demo.mask_path, result.mpp, result.level_shape(0))
    pred = result.mask(0)[:]
    side = args.region_px
    wrong = (pred != gt) & (gt > 0)
    corners = [(y, x) for y in range(0, pred.shape[0] - side + 1, side // 4)
               for x in range(0, pred.shape[1] - side + 1, side // 4)]
    y, x = max(corners, key=lambda c: wrong[c[0] : c[0] + side, c[1] : c[1] + side].sum())

    viewer = open_viewer(out, show=True)  # shown (on the virtual display): the canvas gets its real size
    viewer.window.resize(1400, 900)
    settle()
    corrections = next(w for w in viewer.window.dock_widgets.values() if isinstance(w, CorrectionsWidget))
    mask = next(layer for layer in viewer.layers if (layer.metadata.get("wsi_seg_result") or {}).get("kind") == "mask")
    (sy, sx), (ty, tx) = mask.scale[-2:], mask.translate[-2:]
    center = (ty + (y + side / 2 - 0.5) * sy, tx + (x + side / 2 - 0.5) * sx)
    viewer.scene.camera.center = center
    viewer.scene.camera.zoom = min(viewer.canvas.size) / (side * sy * 1.6)
    settle(1.0)
    edit = corrections.edit_visible_region()
    region = edit.metadata[EDIT_KEY]
    f, (oy, ox) = 2**region.level, region.origin_yx
    # paint the truth inside the square, as a user would with the brush
    rows = np.arange(edit.data.shape[0]) * f + oy
    cols = np.arange(edit.data.shape[1]) * f + ox
    inside = ((rows >= y) & (rows < y + side))[:, None] & ((cols >= x) & (cols < x + side))[None, :]
    truth = gt[np.ix_(np.minimum(rows, gt.shape[0] - 1), np.minimum(cols, gt.shape[1] - 1))]
    paint = inside & (truth > 0) & (truth != edit.data)
    idx = np.nonzero(paint)
    edit.data_setitem(idx, truth[idx])
    saved = corrections.save()
    log.info("saved %d px in %s", sum(r.pixels_changed for r in saved), [r.chunks for r in saved])
    viewer.layers.remove(edit)
    corners_um = [(ty + (y - 0.5) * sy, tx + (x - 0.5) * sx), (ty + (y + side - 0.5) * sy, tx + (x + side - 0.5) * sx)]
    viewer.add_shapes([np.array([corners_um[0], [corners_um[0][0], corners_um[1][1]], corners_um[1],
                                 [corners_um[1][0], corners_um[0][1]]])],
                      shape_type="rectangle", edge_color="white", edge_width=3 * sy, face_color="transparent",
                      name="corrected region", units="µm")
    viewer.layers.selection.active = next(layer for layer in viewer.layers if "corrected" in layer.name
                                          and layer.name.endswith("corrected"))
    viewer.scene.camera.zoom = min(viewer.canvas.size) / (side * sy * 2.2)
    settle()
    save_screenshot(viewer, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
