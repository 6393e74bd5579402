"""Draw the learning curves ``examples/learning_curve.py`` wrote (``curve.json``), one panel per slide.

    python examples/plot_learning_curve.py /tmp/curve5 /tmp/curve7 /tmp/shift --out docs/learning_curve.png

Each panel: whole-slide mIoU without the corrected regions against the regions corrected,
after fine-tuning (solid) and of the starting model on the same pixels (dashed), for
regions chosen by uncertainty (blue) and at random (orange). Drawn with Pillow only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"uncertainty": (31, 119, 180), "random": (255, 127, 14)}
W, H, PAD = 360, 300, 48


def panel(curve: dict, title: str) -> Image.Image:
    """One slide's curves."""
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    rows = curve["rows"]
    xs = sorted({r["regions"] for r in rows})
    values = [100 * r[k] for r in rows for k in ("start", "after")]
    lo, hi = max(0, min(values) - 5), min(100, max(values) + 5)

    def at(n: int, v: float) -> tuple[float, float]:
        i = xs.index(n)
        return (PAD + i * (W - 2 * PAD) / max(1, len(xs) - 1), H - PAD - (100 * v - lo) / (hi - lo) * (H - 2 * PAD))

    d.rectangle([PAD, PAD, W - PAD, H - PAD], outline=(120, 120, 120))
    for n in xs:
        x, _ = at(n, lo / 100)
        d.text((x - 3, H - PAD + 6), str(n), fill="black")
    for v in range(int(lo) // 10 * 10 + 10, int(hi) + 1, 10):
        _, y = at(xs[0], v / 100)
        d.text((6, y - 6), f"{v}%", fill="black")
        d.line([PAD, y, PAD + 4, y], fill="black")
    for choice, color in COLORS.items():
        mine = sorted((r for r in rows if r["choice"] == choice), key=lambda r: r["regions"])
        for key, dash in (("after", False), ("start", True)):
            pts = [at(r["regions"], r[key]) for r in mine]
            for a, b in zip(pts, pts[1:]):
                if dash:
                    for t in range(0, 10, 2):
                        d.line([(a[0] + (b[0] - a[0]) * t / 10, a[1] + (b[1] - a[1]) * t / 10),
                                (a[0] + (b[0] - a[0]) * (t + 1) / 10, a[1] + (b[1] - a[1]) * (t + 1) / 10)],
                               fill=color, width=1)
                else:
                    d.line([a, b], fill=color, width=3)
            for p in pts:
                d.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=color if not dash else "white", outline=color)
    d.text((PAD, 12), title, fill="black")
    d.text((PAD, H - 20), "regions corrected (solid: after fine-tuning, dashed: start model)", fill=(90, 90, 90))
    d.text((W - PAD - 150, PAD + 6), "blue: uncertainty  orange: random", fill=(90, 90, 90))
    return img


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, nargs="+", help="folders learning_curve.py wrote (curve.json)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    panels = []
    for folder in args.work:
        curve = json.loads((folder / "curve.json").read_text(encoding="utf-8"))
        shift = f", stain variation {curve['stain_variation']}" if curve.get("stain_variation") else ""
        panels.append(panel(curve, f"slide seed {curve['slide_seed']}{shift}: mIoU without corrected regions"))
    out = Image.new("RGB", (W * len(panels), H), "white")
    for i, p in enumerate(panels):
        out.paste(p, (i * W, 0))
    out.save(args.out)
    print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
