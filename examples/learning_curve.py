"""A learning curve of the correction loop: K corrected regions, chosen by uncertainty or at random.

On a generated demo slide (ground truth known) a simulated annotator corrects regions of
the result (the true classes painted into each, as napari's brush would), ``wsi-seg
finetune`` learns them, the slide is segmented again by the new model and the round
repeats with more regions: 1, 2, 4 … corrected in all. The regions come either from the
``wsi-seg review`` ranking (most uncertain tissue first, those corrected left out) or at
random among the tissue regions. The score is the whole-slide mIoU (MLPS) with every
corrected region left out, so only what the model learned for the rest of the slide
counts; the starting model is scored on the same pixels::

    python examples/learning_curve.py --work /tmp/curve                 # bundled demo model, slide seed 5
    python examples/learning_curve.py --work /tmp/curve --rounds 4 --seed 7

Each round's result, corrections and fine-tune stay in ``--work/<choice>/``; the table is
printed and written to ``--work/curve.md`` and ``curve.json`` (``examples/plot_learning_curve.py``
draws several of them). The fine-tune settings are read back from each
run's ``config.yaml``.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import yaml
from _screenshot import loop_parser, segmented_with_truth

log = logging.getLogger("learning_curve")


def main(argv: list[str] | None = None) -> int:
    parser = loop_parser(__doc__.splitlines()[0], seed=5, region_patches=1)
    parser.add_argument("--rounds", type=int, default=3, help="rounds: 1, 2, 4 … regions corrected in all (default: 3)")
    parser.add_argument("--stain-variation", type=float, default=None, metavar="V",
                        help="a shifted generator: the slide's stain drawn with this variation (the demo slides use "
                             "0.5; 2 gives other colours, as a new hospital's slides differ) (default: as the demo)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from wsi_seg.inference.segment import SegmentOptions, segment_slide
    from wsi_seg.model import load_checkpoint
    from wsi_seg.model.default import default_model_path
    from wsi_seg.reports.evaluate_slide import region_miou
    from wsi_seg.reports.review import rank_regions
    from wsi_seg.reports.review_options import ReviewOptions
    from wsi_seg.result.format import is_complete
    from wsi_seg.result.reader import Result

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    demo = _write_slide(work / "slide.tif", args.size, args.seed, args.stain_variation)
    ckpt0 = args.model or default_model_path()
    options = SegmentOptions(device=args.device, overwrite=True, progress=False)
    first = work / "start.zarr"
    start, gt = segmented_with_truth(demo, first, ckpt0, args.device)
    pred0 = start.mask(0)[:]
    names = start.class_names
    review = ReviewOptions(top=10_000, region_patches=args.region_patches)
    side = args.region_patches * int(start.provenance.patch_size_px)
    h, w = gt.shape
    cells = [(y, x) for y in range(0, h, side) for x in range(0, w, side) if (gt[y : y + side, x : x + side] > 0).mean() > 0.2]

    def score(pred: np.ndarray, boxes: list[tuple[int, int]]) -> float:
        keep = np.ones_like(gt, bool)
        for y, x in boxes:
            keep[y : y + side, x : x + side] = False
        return region_miou(np.where(keep, pred, 0), np.where(keep, gt, 0), names)

    rows = []
    for choice in ("uncertainty", "random"):
        rng = random.Random(args.seed)
        folder = work / choice
        folder.mkdir(exist_ok=True)
        current, ckpt, boxes = first, Path(ckpt0), []
        for k in range(1, args.rounds + 1):
            want = 2 ** (k - 1)
            res = folder / f"round{k}.zarr"
            if not is_complete(res):
                shutil.rmtree(res, ignore_errors=True)
                shutil.copytree(current, res)
            chosen = folder / f"round{k}.json"  # a rerun reuses the regions the first run chose
            if chosen.is_file():
                new = [tuple(c) for c in json.loads(chosen.read_text(encoding="utf-8"))]
            else:
                _paint(res, boxes, side, gt)  # the annotator's earlier corrections, on the new result
                if choice == "uncertainty":
                    ranked = [(r.y0, r.x0) for r in rank_regions(Result.open(res), review)]
                    new = [c for c in ranked if c not in boxes][: want - len(boxes)]
                else:
                    pool = [c for c in cells if c not in boxes]
                    new = rng.sample(pool, min(want - len(boxes), len(pool)))
                chosen.write_text(json.dumps([list(c) for c in new]), encoding="utf-8")
            _paint(res, boxes + new, side, gt)
            boxes = boxes + new
            run = folder / f"finetune{k}"
            ckpt, settings = _finetune(res, run, ckpt, args.device)
            after = folder / f"after{k}.zarr"
            if not is_complete(after):
                segment_slide(demo.path, after, load_checkpoint(ckpt), options)
            pred = Result.open(after).mask(0)[:]
            rows.append((choice, len(boxes), score(pred0, boxes), score(pred, boxes)))
            log.info("%s, %d regions: %.1f%% → %.1f%% (%s)", choice, len(boxes), 100 * rows[-1][2], 100 * rows[-1][3],
                     settings)
            current = after
    table = ["| regions corrected | chosen by | whole slide mIoU without them: start model | after fine-tuning |",
             "|---|---|---|---|"]
    table += [f"| {n} | {c} | {a:.1%} | {b:.1%} |" for c, n, a, b in sorted(rows, key=lambda r: (r[1], r[0]))]
    text = "\n".join(table)
    print(text)
    (work / "curve.md").write_text(text + "\n", encoding="utf-8")
    (work / "curve.json").write_text(json.dumps({
        "slide_seed": args.seed, "stain_variation": args.stain_variation, "region_px": side,
        "rows": [{"choice": c, "regions": n, "start": a, "after": b} for c, n, a, b in rows]}, indent=1) + "\n",
        encoding="utf-8")
    return 0


def _write_slide(path: Path, size: int, seed: int, stain_variation: float | None):
    """The demo slide, its stain drawn with ``stain_variation`` when given (a shifted generator)."""
    from wsi_seg.synthetic import slide as synthetic_slide

    if stain_variation is None:
        return synthetic_slide.write_demo_slide(path, size_px=(size, size), seed=seed)
    original = synthetic_slide.TissueStyle.random
    synthetic_slide.TissueStyle.random = staticmethod(lambda rng, stain_variation=0.5: original(rng, stain_variation=v))
    v = stain_variation
    try:
        return synthetic_slide.write_demo_slide(path, size_px=(size, size), seed=seed)
    finally:
        synthetic_slide.TissueStyle.random = staticmethod(original)


def _paint(result: Path, boxes: list[tuple[int, int]], side: int, gt: np.ndarray) -> None:
    """Paint the true classes into each box of ``result`` (tissue pixels), as a user would."""
    from wsi_seg.result.corrections import save_corrections
    from wsi_seg.result.reader import Result

    for y, x in boxes:
        crop = np.asarray(Result.open(result).mask(0, Result.open(result).current_labels)[y : y + side, x : x + side])
        truth = gt[y : y + crop.shape[0], x : x + crop.shape[1]]
        fixed = np.where(truth > 0, truth, crop).astype(np.uint8)
        save_corrections(result, (y, x), crop, fixed, author="learning_curve.py")


def _finetune(result: Path, run: Path, ckpt: Path, device: str) -> tuple[Path, str]:
    """``wsi-seg finetune RESULT --model CKPT --out RUN`` with its defaults (resumed when done)."""
    from wsi_seg_training.config import load_config
    from wsi_seg_training.finetune import finetune
    from wsi_seg_training.finetune_config import FinetuneConfig

    if not (run / "checkpoint" / "model.safetensors").is_file():
        cfg = load_config(FinetuneConfig, None, {"model": str(ckpt), "out": str(run), "device": device,
                                                 "progress": False}).validate()
        finetune(cfg, [str(result)], overwrite=True)
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    return run / "checkpoint", f"epochs {saved['epochs']}, replay {saved['replay']}"


if __name__ == "__main__":
    raise SystemExit(main())
