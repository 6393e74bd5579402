"""The thesis' reference numbers (Swin-T, ImageNet-22k init; IoU %), for ``wsi-seg fit`` reports.

Stage 1 (pseudo-labels, PSCL, gated ε = 0): tables 5.4 / 5.5 (= the ε = 0 rows of tables
5.16 / 5.17); ungated: tables 5.16 / 5.17 "None"; stage 2 with cross-entropy: tables
5.21 / 5.22 per class (mIoU and fwIoU as table 5.8, colour seeding); stage 2 with the
noise-reduced loss: table 5.23 (−1.45 mIoU on LUAD-HistoSeg, −2.80 on BCSS-WSSS below
cross-entropy); random initialisation: table 5.13. The best published since, for scale: UAM (Kang et al.
2025, the thesis' best comparison) and PM2GP (2026).
"""

from __future__ import annotations

REFERENCE: dict = {
    "luad": [
        ("stage 1, PSCL, gated (tables 5.4/5.16)",
         {"TE": 67.49, "NEC": 72.39, "LYM": 69.82, "TAS": 65.28, "mIoU": 68.75, "fwIoU": 67.35}),
        ("stage 1, PSCL, ungated (table 5.16)",
         {"TE": 67.86, "NEC": 73.18, "LYM": 71.36, "TAS": 65.50, "mIoU": 69.48, "fwIoU": 67.85}),
        ("stage 2, CE (tables 5.8/5.21)",
         {"TE": 70.42, "NEC": 73.66, "LYM": 71.81, "TAS": 66.51, "mIoU": 70.60, "fwIoU": 69.40}),
        ("stage 2, NR (table 5.23)", {"mIoU": 69.15, "fwIoU": 68.42}),
        ("stage 1, random init (table 5.13)", {"mIoU": 35.62, "fwIoU": 43.35}),
        ("best since: PM2GP 2026", {"mIoU": 78.83}),
    ],
    "bcss": [
        ("stage 1, PSCL, gated (tables 5.5/5.17)",
         {"TUM": 78.66, "STR": 67.05, "LYM": 49.11, "NEC": 63.96, "mIoU": 64.70, "fwIoU": 70.13}),
        ("stage 1, PSCL, ungated (table 5.17)",
         {"TUM": 78.05, "STR": 66.44, "LYM": 48.29, "NEC": 60.62, "mIoU": 63.35, "fwIoU": 69.39}),
        ("stage 2, CE (tables 5.8/5.22)",
         {"TUM": 79.41, "STR": 68.91, "LYM": 52.63, "NEC": 63.91, "mIoU": 66.22, "fwIoU": 71.60}),
        ("stage 2, NR (table 5.23)", {"mIoU": 63.42, "fwIoU": 68.96}),
        ("stage 1, random init (table 5.13)", {"mIoU": 44.64, "fwIoU": 55.11}),
        ("best since: PM2GP 2026", {"mIoU": 70.99}),
    ],
    "note": ("Thesis rows in italics: Swin-T from ImageNet-22k, 5 stage-1 / 20 stage-2 epochs on an RTX 3090 "
             "(table 5.1), test split. The thesis does not say which protocol its scores use; they are shown "
             "beside ours under mlps, the protocol of the MLPS code it compares with (tables 5.4/5.5)."),
}


def reference_rows(dataset_format: str) -> list[tuple[str, dict[str, float]]]:
    """(row name, column → IoU %) of the thesis for a dataset format; [] when it has none."""
    return list(REFERENCE.get(dataset_format, []))
