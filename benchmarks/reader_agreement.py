"""Do the slide decoders change the result? The bundled demo model segments a demo slide
once per ``--reader``; masks are compared with the OpenSlide run pixel by pixel, and each
is scored against the slide's ground truth.

The demo model runs at 1.0 µm/px. On the default demo slide (0.25 µm/px, levels 0.25 /
1.0 / 4.0) it reads level 1 at full scale, so jpeg-cpu decodes without DCT scaling; a
slide scanned at 0.5 µm/px (``--mpp 0.5``: levels 0.5 / 2.0) is read from level 0 at 1/2,
the reduced-DCT case.

    python benchmarks/reader_agreement.py --mpp 0.5 --size 4096
    python benchmarks/reader_agreement.py --mpp 0.25 --size 8192
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import demo_slide, print_table, read_result_mask, work_folder  # noqa: E402

from wsi_seg.inference.segment import SegmentOptions, segment_slide  # noqa: E402
from wsi_seg.model import load_checkpoint  # noqa: E402
from wsi_seg.model.default import default_model_path  # noqa: E402
from wsi_seg.reports.evaluate_slide import slide_miou  # noqa: E402
from wsi_seg.result.format import read_provenance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="folder for the slide (kept and reused)")
    ap.add_argument("--size", type=int, default=4096, help="demo slide side, px")
    ap.add_argument("--mpp", type=float, default=0.5, help="demo slide level-0 µm/px")
    ap.add_argument("--readers", default="jpeg-cpu,jpeg-device", help="decoders compared with openslide")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    model = load_checkpoint(default_model_path())
    rows = []
    with work_folder(args.work) as work:
        slide = demo_slide(work, args.size, 0.6, mpp=args.mpp)
        masks = {}
        for reader in ("openslide", *args.readers.split(",")):
            res = segment_slide(slide.path, work / f"agree_{reader}.zarr", model,
                                SegmentOptions(device=args.device, reader=reader, overwrite=True, progress=False))
            masks[reader] = read_result_mask(res.out)
            used = read_provenance(res.out)["inference"]["reader"]
            ref = masks["openslide"]
            tissue = ref > 0
            scale = f"1/{used['dct_reduction']}" if "dct_reduction" in used else "-"
            rows.append([reader, used["used"], used["level"], scale, res.patches_run,
                         f"{(masks[reader] == ref).mean():.2%}", f"{(masks[reader][tissue] == ref[tissue]).mean():.2%}",
                         f"{slide_miou(res.out, slide.mask_path)['miou']:.2%}", res.patches_per_second])
    print(f"demo model (1.0 µm/px) on a {args.size}² demo slide at {args.mpp} µm/px, device {args.device}")
    print_table(["reader", "used", "level", "DCT scale", "patches", "= openslide", "= on tissue", "mIoU vs truth",
                 "patches/s"], rows)
    worst = min(float(r[5].rstrip("%")) for r in rows[1:]) if len(rows) > 1 else 100.0
    print(f"lowest agreement with openslide = {worst / 100:.4f}")


if __name__ == "__main__":
    main()
