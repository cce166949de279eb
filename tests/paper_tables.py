"""The five papers' tables, typed from their text (/work/shared/papers/<id>_*.txt), for the config coverage tests.

``TABLES[paper][table]`` maps ``(row, column)`` to ``(value, std)`` exactly as printed (std None where the paper gives
no ±); ``METRIC[paper][table]`` names the metric of a one-metric table. Row and column labels are the paper's.
Only the cells of runs peerkd can train are listed; ``NOT_RUN`` names the other cells and why. Not typed: KDCL's
Table 8 (COCO detection, not a peerkd task), Table 3's parameter counts and PS-KD's training times (no run
metric), MDE's Table 6 and Fig. 3 (their configs and tests are the MDE ablation's: tests/configs/test_configs_mde.py).
"""
from __future__ import annotations


def _grid(text: str, columns: list[str]) -> dict:
    """Rows ``label | v±s v±s ...`` (``—`` where the paper prints none) -> {(row, column): (value, std)}."""
    out = {}
    for line in text.strip().splitlines():
        label, values = line.split("|")
        for column, cell in zip(columns, values.split()):
            if cell == "—":
                continue
            value, _, std = cell.partition("±")
            out[(label.strip(), column)] = (float(value), float(std) if std else None)
    return out


# ------------------------------------------------------------------------------------------------ paper 000 (CSS)
CSS_T1 = _grid("""
ResNet-56    | 76.14±0.38 75.94±0.05 76.67±0.20 —          74.28±0.36 78.20±0.15 78.93±0.09
ResNet-110   | 77.92±0.34 78.16±0.19 78.78±0.29 79.98±0.55 76.21±0.57 80.71±0.17 81.56±0.34
WRN20-8      | 79.39±0.13 78.65±0.07 79.18±0.13 80.51±0.49 78.03±0.40 81.12±0.15 81.40±0.10
ResNeXt-29   | 80.96±0.20 81.38±0.56 81.65±0.28 82.62±0.23 79.43±0.43 82.83±0.16 83.36±0.11
PyramidNet   | 81.15±0.07 81.33±0.39 81.29±0.12 —          79.52±0.14 82.07±0.13 83.26±0.10
SeResNet-110 | 78.58±0.02 79.00±0.23 79.37±0.26 —          76.83±0.15 80.42±0.13 81.44±0.10
""", ["DML", "ONE", "OKDDip", "PCL", "Baseline", "Ours", "Ensemble"])
CSS_T2 = _grid("""
Top1(4) | 80.40 80.05 79.75 81.27
Top1(6) | 80.75 80.45 80.25 81.56
""", ["ONE", "CL", "OKDDip", "Ours"])
CSS_T3 = _grid("""
CIFAR-10 ResNet-56       | 94.26±0.10 95.01±0.06
CIFAR-10 ResNet-110      | 94.42±0.19 95.43±0.14
Tiny-ImageNet ResNet-50  | 49.43±0.50 54.49±0.73
CUB ResNet-50            | 53.34±1.40 60.78±0.88
StanfordDogs ResNet-50   | 63.74±0.16 71.59±0.77
StanfordCars ResNet-50   | 81.72±1.81 87.72±0.41
""", ["Baseline", "Ours"])
CSS_T4 = _grid("""
ResNet-110 + ResNet-56    | 80.29±0.12 78.70±0.16 80.54±0.10
ResNet-110 + ResNet-110   | 80.65±0.16 80.76±0.21 81.56±0.15
ResNet-110 + SeResNet-110 | 80.68±0.12 80.56±0.07 81.82±0.24
ResNet-110 + PyramidNet   | 81.02±0.13 82.90±0.23 83.33±0.36
""", ["Net1", "Net2", "Ensemble"])
CSS_T5 = _grid("""
Backbone | 76.21
A        | 79.88
B        | 80.15
C        | 80.97
D        | 81.27
""", ["CIFAR-100"])
# Fig. 4 (top-1 error vs branch number, ResNet-110, CIFAR-100): sec. 4.4's text prints CSS's and PCL's 3 and 4
# branch points (PCL's "as reported in [Wu and Gong, 2021]"); OKDDip's curve has no printed number
CSS_FIG4 = {("CSS", "3 branches"): (19.29, None), ("CSS", "4 branches"): (18.97, None),
            ("PCL", "3 branches"): (20.02, None), ("PCL", "4 branches"): (19.81, None)}

# ------------------------------------------------------------------------------------------------ paper 001 (MDE)
MDE_T1 = _grid("""
ResNet-32         | 6.38±0.10 5.45±0.07
ResNet-110        | 5.46±0.02 4.47±0.02
ResNext-50(32x4d) | 5.05±0.12 4.66±0.05
Xception          | 5.70±0.08 5.19±0.05
ShuffleNetV2-1.0  | 9.21±0.04 8.36±0.03
""", ["Baseline", "Our Method"])
MDE_T2 = _grid("""
ResNet-32         | 28.39±0.04 25.76±0.04 25.45±0.10 24.84±0.06
ResNet-110        | 23.85±0.17 21.94±0.13 21.01±0.16 20.52±0.13
ResNext-50(32x4d) | 20.43±0.19 18.24±0.03 17.90±0.06 17.55±0.06
Xception          | 21.71±0.06 19.69±0.06 19.66±0.07 19.55±0.11
ShuffleNetV2-1.0  | 28.76±0.12 25.23±0.11 25.28±0.18 25.17±0.10
""", ["Baseline", "ONE", "OKDDip", "Our Method"])
MDE_T3 = _grid("""
ResNet-32         | 23.22 22.63
ResNet-110        | 19.42 18.85
ResNext-50(32x4d) | 17.02 16.68
""", ["OKDDip", "Our Method"])
MDE_T4 = _grid("""
ResNet-32         | 15.96±0.13 14.60±0.09 14.41±0.10 14.28±0.12
ResNet-110        | 13.99±0.06 12.29±0.09 12.21±0.11 11.86±0.08
ResNext-50(32x4d) | 13.65±0.12 12.19±0.04 12.20±0.06 12.02±0.07
""", ["Baseline", "ONE", "OKDDip", "Our Method"])
MDE_T5 = _grid("""
ResNet-32         | 13.55 13.44
ResNet-110        | 11.35 10.98
ResNext-50(32x4d) | 11.77 11.54
""", ["OKDDip", "Our Method"])

# ----------------------------------------------------------------------------------------------- paper 002 (KDCL)
KDCL_T1 = _grid("""
ResNet-34  | 73.5 70.8
ResNet-50  | 76.5 71.2
ResNet-101 | 77.9 71.4
""", ["Teacher Top-1", "Student Top-1"])
KDCL_T1[("caption: hard target", "Student Top-1")] = (70.1, None)
KDCL_T2 = _grid("""
Vanilla       | 76.8 71.2
KD[10]        | 76.8 72.1
DML[32]       | 75.8 71.7
ONE[15]       | —    72.2
CLNN[22]      | —    72.4
KDCL-Naive    | 77.5 72.9
KDCL-Linear   | 77.8 73.1
KDCL-MinLogit | 77.8 73.1
KDCL-General  | 77.1 72.0
""", ["ResNet-50", "ResNet-18"])
KDCL_T3 = _grid("""
Vanilla              | 71.2 90.0
ONE[15]              | 72.2 90.6
KDCL MobileNetV2x1.2 | 72.9 90.8
CLNN[22]             | 72.4 90.7
KDCL ResNet-50       | 73.1 91.2
""", ["Top-1", "Top-5"])
# Table 4: one row per (pair, method); columns Model 1 / Model 2
KDCL_T4 = _grid("""
MBV2 / MBV2x0.5 Vanilla                | 72.0 64.8
MBV2 / MBV2x0.5 Linear                 | 73.1 66.2
MBV2 / MBV2x0.5 MinLogit               | 73.1 66.3
ResNet-18 / MBV2x0.5 Vanilla           | 71.2 64.8
ResNet-18 / MBV2x0.5* Linear           | 71.8 65.6
ResNet-18 / MBV2x0.5* MinLogit         | 71.9 65.6
ResNet-18 / MBV2 Vanilla               | 71.2 72.0
ResNet-18 / MBV2* Linear               | 72.1 72.8
ResNet-18 / MBV2* MinLogit             | 72.2 72.8
ResNet-50 / MBV2x0.5 Vanilla           | 76.8 64.8
ResNet-50 / MBV2x0.5* Linear           | 77.5 67.1
ResNet-50 / MBV2x0.5* MinLogit         | 77.7 66.8
ResNet-50* / ResNet-18* Vanilla        | 76.5 71.2
ResNet-50* / ResNet-18* Linear         | 76.8 72.0
ResNet-50* / ResNet-18* MinLogit       | 77.0 72.1
""", ["Model 1", "Model 2"])
KDCL_T5 = _grid("""
Top-1 (%) | 70.1 71.3 71.61 71.75 71.87
""", ["1", "2", "3", "4", "5"])
KDCL_T6 = _grid("""
Vanilla | 76.8 71.2 72.0 64.8
KDCL    | 78.2 73.5 74.0 66.9
""", ["Res-50", "Res-18", "MBV2", "MBV2x0.5"])
# the KD rows also print their teacher (WRN-16-2 72.2, ResNet-32 69.9): the Vanilla row's run, typed there only
KDCL_T7 = _grid("""
Vanilla            | 69.9 72.2
2 distill 1        | 73.3 —
1 distill 2        | —    74.5
DML                | 73.3 74.8
ONE                | 73.6 —
CLNN               | 73.4 —
KDCL-Naive         | 73.7 74.8
KDCL-Naive ICL     | 73.8 74.9
KDCL-Linear        | 73.4 74.6
KDCL-Linear ICL    | 73.6 74.9
KDCL-MinLogit      | 73.0 74.1
KDCL-MinLogit ICL  | 73.5 74.6
KDCL-General       | 74.0 75.2
KDCL-General ICL   | 74.3 75.5
""", ["ResNet-32", "WRN-16-2"])
KDCL_T9 = _grid("""
R | 71.5 73.3 73.8 74.3 74.7 74.0 72.9
W | 73.9 74.5 75.0 75.5 76.1 74.9 74.5
""", ["0.1", "0.2", "0.5", "1", "2", "5", "10"])
KDCL_T10 = _grid("""
Vanilla  | 72.3 74.3
KDCL     | 74.3 75.5
KDCL ICL | 74.6 75.8
""", ["ResNet-32", "WRN-16-2"])

# -------------------------------------------------------------------------------------------- paper 003 (CutnMix)
_CNM_COLUMNS = ["Vgg-16", "Vgg-19", "ResNet-32", "ResNet-110", "WideResNet", "DenseNet"]
CUTNMIX_T1 = {}
for _dataset, _text in {"CIFAR-10": """
Baseline    | 93.89±0.06 93.93±0.06 93.51±0.05 94.83±0.32 94.47±0.10 92.89±0.28
DML [11]    | 94.13±0.37 93.93±0.18 93.91±0.11 94.46±0.24 95.34±0.05 93.26±0.33
CutMix [9]  | 94.71±0.03 94.59±0.02 94.04±0.20 95.18±0.07 95.11±0.22 93.24±0.12
CS-KD [6]   | 93.72±0.20 93.54±0.04 93.21±0.18 93.90±0.05 95.03±0.23 92.13±0.27
DDGSD [20]  | 94.35±0.14 94.27±0.08 94.05±0.04 95.24±0.04 95.29±0.13 93.18±0.21
KDCL [18]   | 93.67±0.09 93.49±0.08 93.71±0.02 94.91±0.17 94.57±0.10 92.99±0.17
ONE [15]    | 93.70±0.29 93.73±0.13 94.03±0.06 95.24±0.16 94.54±0.09 92.92±0.43
OKDDip [17] | 93.57±0.18 93.33±0.25 93.55±0.03 95.21±0.25 94.47±0.18 92.28±0.06
Ours        | 94.84±0.25 94.81±0.06 94.24±0.04 95.76±0.14 95.90±0.01 93.64±0.12
""", "CIFAR-100": """
Baseline    | 73.72±0.15 72.83±0.59 71.71±0.24 76.28±0.29 77.71±0.05 71.62±0.47
DML [11]    | 75.39±0.13 74.14±0.03 72.66±0.03 77.90±0.01 79.57±0.05 72.36±0.05
CutMix [9]  | 75.43±0.22 74.34±0.03 72.69±0.30 78.58±0.08 79.43±0.19 71.74±0.30
CS-KD [6]   | 74.53±0.30 73.59±0.70 70.85±0.33 76.79±0.24 78.39±0.20 70.50±0.40
DDGSD [20]  | 75.65±0.04 75.32±0.01 73.68±0.23 77.45±0.17 79.17±0.08 72.32±0.32
KDCL [18]   | 73.04±0.04 72.19±0.07 72.26±0.04 78.37±0.22 79.49±0.01 72.16±0.71
ONE [15]    | 73.33±0.03 72.09±0.02 73.71±0.93 78.91±0.19 78.62±0.24 71.45±0.02
OKDDip [17] | 73.97±0.07 71.71±0.14 72.34±0.06 78.17±0.16 79.34±0.20 70.62±0.01
Ours        | 76.56±0.28 75.68±0.20 73.84±0.25 79.32±0.35 80.09±0.07 72.64±0.12
"""}.items():
    for (_row, _column), _cell in _grid(_text, _CNM_COLUMNS).items():
        CUTNMIX_T1[(f"{_dataset} {_row}", _column)] = _cell
CUTNMIX_T2 = _grid("""
CutnMix               | 78.38±0.25
CutnMix + MMD         | 78.74±0.13
CutnMix + PT          | 78.65±0.08
CutnMix + MMD + PT    | 79.32±0.35
""", ["Results"])

# ----------------------------------------------------------------------------------------------- paper 004 (PS-KD)
# Table 1's columns as printed, and the peerkd metric of each (NLL in nats, ECE in %, AURC x 10^3: the paper's units)
PSKD_T1_COLUMNS = {"Top-1 Err (%)": "error", "Top-5 Err (%)": "top5_error", "NLL": "nll", "ECE (%)": "ece",
                   "AURC (x10^3)": "aurc"}
PSKD_T1 = {}
for _net, _text in {"ResNet-18": """
(baseline)      | 21.41 5.57 0.87 5.14 56.92
+BYOT           | 21.89 5.64 1.00 11.24 53.79
+DMFL           | 21.61 5.45 0.87 5.31 57.13
+PS-KD          | 19.94 4.79 0.79 4.21 50.44
+PS-KD+BYOT     | 20.67 4.66 0.78 7.42 50.91
+PS-KD+DMFL     | 20.02 4.73 0.80 4.52 50.55
+DMFL+BYOT      | 21.18 5.47 1.02 11.74 54.89
+PS-KD+BYOT+DMFL | 20.03 4.16 0.72 4.15 49.86
""", "ResNet-50": """
(baseline)      | 21.96 5.21 0.89 8.75 57.24
+BYOT           | 19.03 4.38 0.94 11.51 48.32
+DMFL           | 20.13 4.96 0.85 8.63 51.20
+PS-KD          | 20.19 4.50 0.77 4.03 50.76
+PS-KD+BYOT     | 17.92 3.94 0.75 8.96 46.76
+PS-KD+DMFL     | 19.12 4.43 0.73 3.51 47.57
+DMFL+BYOT      | 19.70 4.77 0.87 9.79 48.58
+PS-KD+BYOT+DMFL | 17.52 3.75 0.71 10.00 46.25
""", "ResNeXt-50": """
(baseline)      | 19.25 4.48 0.81 7.49 48.13
+BYOT           | 19.09 4.54 0.84 9.62 46.66
+DMFL           | 19.41 4.43 0.82 7.45 47.72
+PS-KD          | 18.79 4.20 0.74 4.85 48.52
+PS-KD+BYOT     | 18.36 4.34 0.80 9.99 46.50
+PS-KD+DMFL     | 19.25 4.14 0.75 5.18 47.46
+DMFL+BYOT      | 19.30 4.23 0.88 9.86 47.98
+PS-KD+BYOT+DMFL | 18.27 4.11 0.72 10.32 45.71
"""}.items():
    for (_row, _column), _cell in _grid(_text, list(PSKD_T1_COLUMNS)).items():
        PSKD_T1[(f"{_net} {_row}", _column)] = _cell
PSKD_T2 = _grid("""
ResNet-18 +PS-KD+BYOT+DMFL  | 79.76 67.90 75.22 78.92 79.68
ResNet-50 +PS-KD+BYOT+DMFL  | 81.98 72.64 79.11 81.80 82.14
ResNeXt-50 +PS-KD+BYOT+DMFL | 81.59 78.22 79.76 81.67 82.98
ResNet-18                   | 78.59 0.92 1.24 0.60 78.08
ResNet-50                   | 79.04 1.12 0.81 0.89 78.78
ResNeXt-50                  | 80.74 1.25 1.06 0.84 80.53
""", ["Classifier 4/4", "Classifier 3/4", "Classifier 2/4", "Classifier 1/4", "Ensemble"])
PSKD_T3 = _grid("""
1,2,3 | 20.23 4.56
2,3   | 20.57 4.93
3     | 21.21 5.20
""", ["Top-1 err. (%)", "Top-5 err. (%)"])
PSKD_T4 = _grid("""
4 | 21.21 5.20
3 | 21.00 4.69
2 | 26.33 6.30
""", ["Top-1 err. (%)", "Top-5 err. (%)"])
PSKD_T34_COLUMNS = {"Top-1 err. (%)": "error", "Top-5 err. (%)": "top5_error"}

# Kim et al. (PS-KD, ICCV 2021) Table 1, CIFAR-100, as lgcnsai/PS-KD-Pytorch README.md prints it: paper 004 builds on
# PS-KD, so its table is filed under paper 004 as "kim2021-1" (configs/pskd/kim2021_table1/)
PSKD_KIM_T1 = _grid("""
PreAct ResNet-18 (baseline)          | 24.18 6.90 1.10 11.84 67.65
PreAct ResNet-18 + Label Smoothing   | 20.94 6.02 0.98 10.79 57.74
PreAct ResNet-18 + CS-KD             | 21.30 5.70 0.88 6.24 56.56
PreAct ResNet-18 + TF-KD             | 22.88 6.01 1.05 11.96 61.77
PreAct ResNet-18 + PS-KD             | 20.82 5.10 0.76 1.77 52.10
PreAct ResNet-101 (baseline)         | 20.75 5.28 0.89 10.02 55.45
PreAct ResNet-101 + Label Smoothing  | 19.84 5.07 0.93 3.43 95.76
PreAct ResNet-101 + CS-KD            | 20.76 5.62 1.02 12.18 64.44
PreAct ResNet-101 + TF-KD            | 20.13 5.10 0.84 6.14 58.8
PreAct ResNet-101 + PS-KD            | 19.43 4.30 0.74 6.92 49.01
DenseNet-121 (baseline)              | 20.05 4.99 0.82 7.34 52.21
DenseNet-121 + Label Smoothing       | 19.80 5.46 0.92 3.76 91.06
DenseNet-121 + CS-KD                 | 20.47 6.21 1.07 13.80 73.37
DenseNet-121 + TF-KD                 | 19.88 5.10 0.85 7.33 69.23
DenseNet-121 + PS-KD                 | 18.73 3.90 0.69 3.71 45.55
ResNeXt-29 (baseline)                | 18.65 4.47 0.74 4.17 44.27
ResNeXt-29 + Label Smoothing         | 17.60 4.23 1.05 22.14 41.92
ResNeXt-29 + CS-KD                   | 18.26 4.37 0.80 5.95 42.11
ResNeXt-29 + TF-KD                   | 17.33 3.87 0.74 6.73 40.34
ResNeXt-29 + PS-KD                   | 17.28 3.60 0.72 9.18 40.19
PyramidNet-200 (baseline)            | 16.80 3.69 0.73 8.04 36.95
PyramidNet-200 + Label Smoothing     | 17.82 4.72 0.89 3.46 105.02
PyramidNet-200 + CS-KD               | 18.31 5.70 1.17 14.70 70.05
PyramidNet-200 + TF-KD               | 16.48 3.37 0.79 10.48 37.04
PyramidNet-200 + PS-KD               | 15.49 3.08 0.56 1.83 32.14
""", ["Top-1 Error", "Top-5 Error", "NLL", "ECE", "AURC"])

TABLES = {
    "000": {"1": CSS_T1, "2": CSS_T2, "3": CSS_T3, "4": CSS_T4, "5": CSS_T5, "fig4": CSS_FIG4},
    "001": {"1": MDE_T1, "2": MDE_T2, "3": MDE_T3, "4": MDE_T4, "5": MDE_T5},
    "002": {"imagenet-1": KDCL_T1, "imagenet-2": KDCL_T2, "imagenet-3": KDCL_T3, "imagenet-4": KDCL_T4,
            "imagenet-5": KDCL_T5, "imagenet-6": KDCL_T6, "7": KDCL_T7, "9": KDCL_T9, "10": KDCL_T10},
    "003": {"1": CUTNMIX_T1, "2": CUTNMIX_T2},
    "004": {"1": PSKD_T1, "2": PSKD_T2, "3": PSKD_T3, "4": PSKD_T4, "kim2021-1": PSKD_KIM_T1},
}
# cells of those tables that no config reproduces, and why
NOT_RUN = {
    # paper 004 Table 2's baseline rows: their shallow columns (0.6-1.25 %, chance) are untrained heads that a
    # baseline without BYOT does not build in peerkd, so its "Ensemble" cannot be formed either
    *{("004", "2", net, col) for net in ("ResNet-18", "ResNet-50", "ResNeXt-50")
      for col in ("Classifier 3/4", "Classifier 2/4", "Classifier 1/4", "Ensemble")},
    # PS-KD's own Table 1 (kim2021-1): label smoothing is no peerkd method; PyramidNet-200 (alpha 240, bottleneck
    # blocks) is no peerkd network
    *{("004", "kim2021-1", row, col) for (row, col) in PSKD_KIM_T1
      if "Label Smoothing" in row or row.startswith("PyramidNet-200")},
}
# the table whose metric is the same for every cell
METRIC = {"000": "top1", "001": "error", "002": "top1", "003": "top1"}
PROTOCOL = {"000": {}, "001": {"mean_of": 3}, "003": {"mean_of": 3}, "004": {},
            "002-cifar": {"median_of": 5}, "002-imagenet": {}}
