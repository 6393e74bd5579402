"""bf16 autocast vs fp32 on this device: model-only patches/s and mask agreement, side by side.

Throughput: each preset's stage-2 network on in-memory patches, fp32 and bf16 measured
alternately in one run. Agreement: the bundled demo model segments the demo slide in
both precisions; the share of output pixels with the same class is reported.

    python benchmarks/precision.py --presets small,swin-t --size 8192
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import zarr
from segment_throughput import model_only

from wsi_seg.inference.runtime import resolve_device
from wsi_seg.inference.segment import SegmentOptions, segment_slide
from wsi_seg.model import PsclNet, load_checkpoint, preset_config
from wsi_seg.model.default import default_model_path
from wsi_seg.synthetic import write_demo_slide


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="small,swin-t")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--patches", type=int, default=64)
    ap.add_argument("--size", type=int, default=8192)
    args = ap.parse_args()
    device = resolve_device(args.device)
    low = "bf16" if device.type == "cpu" else "fp16"
    print(f"device {device}, batch {args.batch_size}, threads {torch.get_num_threads()}")
    print(f"{'preset':>8} {'fp32 p/s':>9} {low + ' p/s':>9} {'speed-up':>9}")
    for preset in args.presets.split(","):
        torch.manual_seed(0)
        net = PsclNet(preset_config(preset, stage=2)).eval().to(device)
        fp32 = model_only(net, device, args.batch_size, args.patches, "fp32")
        half = model_only(net, device, args.batch_size, args.patches, low)
        print(f"{preset:>8} {fp32:>9.2f} {half:>9.2f} {half / fp32:>9.2f}")
    model = load_checkpoint(default_model_path(), device=device)
    with tempfile.TemporaryDirectory() as tmp:
        demo = write_demo_slide(Path(tmp) / "s.tif", size_px=(args.size, args.size), seed=0)
        masks = []
        for precision in ("fp32", low):
            opts = SegmentOptions(device=str(device), precision=precision, progress=False, overwrite=True)
            res = segment_slide(demo.path, Path(tmp) / f"{precision}.zarr", model, opts)
            masks.append(zarr.open_group(str(res.out), mode="r")["labels/mask/0"][:])
    agree = float(np.mean(masks[0] == masks[1]))
    print(f"mask agreement {low} vs fp32 (demo model, demo slide) = {agree:.2%}")


if __name__ == "__main__":
    main()
