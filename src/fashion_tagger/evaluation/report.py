"""The evaluation report: one self-contained HTML file a person can open, mail or archive.

Everything is inline (CSS, a few lines of JS to sort tables, plots and thumbnails as base64
`data:` URIs), so the page makes no request to any host and still works years later. The page
reads only the dict of metrics.json, plus the images of the top losses and the run's curves.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fashion_tagger._io import write_bytes_atomic
from fashion_tagger.evaluation import curves
from fashion_tagger.model.rundir import RunPaths

MAX_CONFUSION_CLASSES = 20
THUMB = 176

SECTIONS = (
    ("summary", "Summary"),
    ("curves", "Training curves"),
    ("hierarchy", "Hierarchy"),
    ("calibration", "Confidence calibration"),
    ("confusion", "Confusion matrices"),
    ("confused-pairs", "Most confused pairs"),
    ("top-losses", "Top losses"),
    ("per-class", "Per class"),
    ("attributes", "Attributes"),
    ("slices", "By slice"),
)

CSS = """
:root{--ink:#1f2328;--muted:#656d76;--line:#d8dee4;--soft:#f6f8fa;--accent:#0b6bcb;--good:#1a7f37;--bad:#cf222e}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;color:var(--ink);background:#fff}
header{padding:28px 40px 18px;border-bottom:1px solid var(--line);background:var(--soft)}
header h1{margin:0 0 4px;font-size:24px;font-weight:600}
header p{margin:0;color:var(--muted)}
nav{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid var(--line);padding:8px 40px;display:flex;flex-wrap:wrap;gap:4px 18px}
nav a{color:var(--accent);text-decoration:none;font-size:14px}
nav a:hover{text-decoration:underline}
main{padding:8px 40px 48px;max-width:1280px}
section{margin-top:28px}
h2{font-size:19px;font-weight:600;border-bottom:1px solid var(--line);padding-bottom:6px;margin:0 0 14px}
h3{font-size:15px;font-weight:600;margin:18px 0 8px}
.note{color:var(--muted);font-size:13px;margin:4px 0 10px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:6px 0 18px}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 16px;min-width:150px}
.card .v{font-size:24px;font-weight:600;font-variant-numeric:tabular-nums}
.card .k{color:var(--muted);font-size:13px}
table{border-collapse:collapse;font-size:13.5px;margin:4px 0 12px}
th,td{padding:5px 12px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600;white-space:nowrap}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:hover{background:#f3f8ff}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th:after{content:" \\2195";color:#aab1b9;font-size:11px}
table.sortable th.asc:after{content:" \\2191";color:var(--accent)}
table.sortable th.desc:after{content:" \\2193";color:var(--accent)}
.scroll{max-height:460px;overflow:auto;border:1px solid var(--line);border-radius:6px;display:inline-block;max-width:100%}
.scroll table{margin:0}
.scroll th{position:sticky;top:0}
.bar{display:inline-block;height:8px;border-radius:4px;background:var(--accent);opacity:.55;vertical-align:middle;margin-right:6px}
img.plot{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:14px}
figure{margin:0;border:1px solid var(--line);border-radius:8px;overflow:hidden;background:#fff}
figure .thumb{height:180px;display:flex;align-items:center;justify-content:center;background:var(--soft)}
figure .thumb img{max-width:100%;max-height:172px;min-height:112px;object-fit:contain;image-rendering:auto}
figcaption{padding:8px 10px;font-size:12.5px;line-height:1.45}
figcaption .file{color:var(--muted);word-break:break-all}
.ok{color:var(--good)}.bad{color:var(--bad)}
footer{color:var(--muted);font-size:12px;padding:16px 40px;border-top:1px solid var(--line)}
"""

JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,col){
    th.addEventListener('click',function(){
      var asc=!th.classList.contains('asc');
      t.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc')});
      th.classList.add(asc?'asc':'desc');
      var body=t.tBodies[0], rows=Array.from(body.rows);
      rows.sort(function(a,b){
        var x=a.cells[col].dataset.v, y=b.cells[col].dataset.v;
        var nx=parseFloat(x), ny=parseFloat(y), r;
        if(!isNaN(nx)&&!isNaN(ny)){r=nx-ny}else{r=String(x).localeCompare(String(y))}
        return asc?r:-r;
      });
      rows.forEach(function(r){body.appendChild(r)});
    });
  });
});
"""


# -- small HTML helpers ---------------------------------------------------------------------------
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    numeric: Sequence[bool] | None = None,
    sortable: bool = False,
    scroll: bool = False,
) -> str:
    """A table; each cell is (shown text, sort value) or plain text; numeric columns align right."""
    numeric = numeric or [False] * len(headers)
    cls = ' class="n"'
    head = "".join(
        f"<th{cls if n else ''}>{_e(h)}</th>" for h, n in zip(headers, numeric, strict=True)
    )
    body = []
    for row in rows:
        cells = []
        for cell, n in zip(row, numeric, strict=True):
            shown, value = cell if isinstance(cell, tuple) else (_e(cell), cell)
            cells.append(f'<td{cls if n else ""} data-v="{_e(value)}">{shown}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    table = (
        f"<table{' class=sortable' if sortable else ''}><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )
    return f'<div class="scroll">{table}</div>' if scroll else table


def _card(label: str, value: str) -> str:
    return (
        f'<div class="card"><div class="v">{_e(value)}</div><div class="k">{_e(label)}</div></div>'
    )


def _plt() -> Any:
    """pyplot on the file-only Agg backend (no display needed, none touched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> str:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(uri: str, alt: str) -> str:
    return f'<img class="plot" src="{uri}" alt="{_e(alt)}">'


def _axis_names(labels: Sequence[str], width: int = 26) -> list[str]:
    """Short axis labels: the last name of each path, or `parent > name` where that repeats
    (two parents may each have a "red" child), cut to `width` characters."""
    last = [lab.rsplit(" > ", 1)[-1] for lab in labels]
    names = [
        " > ".join(lab.split(" > ")[-2:]) if last.count(n) > 1 else n
        for lab, n in zip(labels, last, strict=True)
    ]
    return [n if len(n) <= width else n[: width - 1] + "…" for n in names]


def _file_name(image: str, width: int = 36) -> str:
    name = Path(image).name
    if len(name) <= width:
        return name
    stem, dot, ext = name.rpartition(".")
    keep = width - len(ext) - 2
    return f"{stem[: keep // 2]}…{stem[-(keep - keep // 2) :]}{dot}{ext}"


# -- sections -------------------------------------------------------------------------------------
def _summary(m: dict[str, Any]) -> str:
    h = m["hierarchy"]
    a = m["attributes"]
    deepest = m["levels"][-1] if m["levels"] else {}
    cards = [
        _card("exact path accuracy", f"{_pct(h['exact_path_accuracy'])} %"),
        _card(f"{deepest.get('name', '')} accuracy", f"{_pct(deepest.get('accuracy'))} %"),
        _card("hierarchical F1", _num(h["consistent"]["hF1"])),
    ]
    if a["names"]:
        cards += [
            _card("attributes mAP", _num(a["mAP"])),
            _card("attributes F1@k", _num(a["at_k"]["F1@k"])),
        ]
    rows = [
        [
            b["name"],
            (f"{b['n']:,}", b["n"]),
            (_pct(b["accuracy"]), b["accuracy"]),
            (_pct(b["top5_accuracy"]), b["top5_accuracy"]),
            (_pct(b["OP"]), b["OP"]),
            (_pct(b["OR"]), b["OR"]),
            (_pct(b["OF1"]), b["OF1"]),
            (_pct(b["macro_f1"]), b["macro_f1"]),
            (_pct(b["raw_argmax_accuracy"]), b["raw_argmax_accuracy"]),
        ]
        for b in m["levels"]
    ]
    table = _table(
        ["level", "images", "accuracy %", "top-5 %", "OP %", "OR %", "OF1 %", "macro F1 %",
         "raw argmax acc. %"],
        rows,
        numeric=[False] + [True] * 8,
    )  # fmt: skip
    ds = m.get("dataset", {})
    skipped = []
    if ds.get("n_unknown_labels"):
        skipped.append(f"{ds['n_unknown_labels']} with a label path the model does not know")
    if ds.get("n_unreadable"):
        skipped.append(f"{ds['n_unreadable']} unreadable")
    note = f"Left out: {', '.join(skipped)}." if skipped else ""
    return (
        f'<div class="cards">{"".join(cards)}</div>{table}'
        '<p class="note">Level numbers use the consistent decoded path (always a path of the tree); '
        "OP/OR/OF1 are precision, recall and F1 averaged over classes weighted by support; rows whose "
        "true path ends above a level are not counted at that level. Raw argmax: each level's own "
        f"best class, ignoring the tree. {_e(note)}</p>"
    )


def _confusion_plot(block: dict[str, Any]) -> str | None:
    plt = _plt()
    cm = np.asarray(block["confusion"]["matrix"], dtype=np.float64)
    labels = block["confusion"]["labels"]
    if cm.size == 0 or cm.sum() == 0:
        return None
    support = cm.sum(axis=1)
    keep = np.argsort(-support, kind="stable")[: min(MAX_CONFUSION_CLASSES, len(labels))]
    keep = np.sort(keep[support[keep] > 0])  # tree order: siblings sit together
    sub = cm[np.ix_(keep, keep)]
    # shares of the whole true class, also when some of its predictions fall outside the shown ones
    norm = sub / np.maximum(support[keep][:, None], 1)
    n = len(keep)
    size = max(3.6, 0.42 * n + 1.8)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    names = _axis_names([labels[i] for i in keep])
    ax.set_xticks(range(n), names, rotation=55, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if sub[i, j]:
                    color = "white" if norm[i, j] > 0.55 else "#1f2328"
                    ax.text(
                        j, i, f"{int(sub[i, j])}", ha="center", va="center", fontsize=7, color=color
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_title(block["name"], fontsize=11)
    return _png(fig)


def _confusion(m: dict[str, Any]) -> str:
    parts = []
    for b in m["levels"]:
        uri = _confusion_plot(b)
        n = len(b["confusion"]["labels"])
        note = (
            f"The {MAX_CONFUSION_CLASSES} most frequent of {n} classes."
            if n > MAX_CONFUSION_CLASSES
            else f"All {n} classes."
        )
        body = _img(uri, f"confusion matrix of {b['name']}") if uri else "<p>No rows.</p>"
        parts.append(
            f"<h3>{_e(b['name'])}</h3><p class=note>{note} Rows are true classes, normalised to "
            f"1; numbers are counts.</p>{body}"
        )
    return "".join(parts)


def _confused_pairs(m: dict[str, Any]) -> str:
    parts = []
    for b in m["levels"]:
        pairs = b["confused_pairs"]
        if not pairs:
            parts.append(f"<h3>{_e(b['name'])}</h3><p class=note>No confusion.</p>")
            continue
        top = max(p["count"] for p in pairs)
        rows = [
            [
                p["true"],
                p["predicted"],
                (f'<span class="bar" style="width:{60 * p["count"] / top:.0f}px"></span>{p["count"]}', p["count"]),
            ]
            for p in pairs
        ]  # fmt: skip
        parts.append(
            f"<h3>{_e(b['name'])}</h3>"
            + _table(["true", "predicted as", "images"], rows, numeric=[False, False, True])
        )
    return "".join(parts)


def _thumbnail(path: Path) -> str | None:
    from PIL import Image

    from fashion_tagger.dataset import images

    try:
        img = images.decode(path, size=THUMB * 2)
    except Exception:  # the report must render even if an image went missing
        return None
    img.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _top_losses(m: dict[str, Any], dataset_root: Path | None) -> str:
    items = m.get("top_losses") or []
    if not items:
        return "<p>No rows.</p>"
    figs = []
    for it in items:
        uri = _thumbnail(dataset_root / it["image"]) if dataset_root else None
        thumb = (
            f'<img src="{uri}" alt="{_e(it["image"])}">'
            if uri
            else "<span class=note>no image</span>"
        )
        pred = " &gt; ".join(
            f"{_e(p['label'])} <small>({p['score']:.2f})</small>" for p in it["predicted"]
        )
        mark = (
            '<span class="ok">right</span>' if it["correct"] else '<span class="bad">wrong</span>'
        )
        figs.append(
            f'<figure><div class="thumb">{thumb}</div><figcaption>'
            f'<div class="file" title="{_e(it["image"])}">{_e(_file_name(it["image"]))}</div>'
            f"<div><b>true</b> {_e(' > '.join(it['true']))}</div>"
            f"<div><b>predicted</b> {pred}</div>"
            f"<div>loss {it['loss']:.2f} · {mark}</div></figcaption></figure>"
        )  # fmt: skip
    return (
        '<p class="note">The images the model is most wrong about: highest cross-entropy of the '
        "true path (sum over levels), with the consistent predicted path and each level's "
        f'probability.</p><div class="grid">{"".join(figs)}</div>'
    )


def _per_class(m: dict[str, Any]) -> str:
    parts = ['<p class="note">Click a column to sort.</p>']
    for b in m["levels"]:
        rows = [
            [
                c["name"],
                (_num(c["precision"]), c["precision"]),
                (_num(c["recall"]), c["recall"]),
                (_num(c["f1"]), c["f1"]),
                (f"{c['support']:,}", c["support"]),
                (f"{c['predicted']:,}", c["predicted"]),
            ]
            for c in b["per_class"]
        ]
        parts.append(
            f"<h3>{_e(b['name'])}</h3>"
            + _table(
                ["class", "precision", "recall", "F1", "support", "predicted"],
                rows,
                numeric=[False] + [True] * 5,
                sortable=True,
                scroll=True,
            )
        )
    return "".join(parts)


def _attributes(m: dict[str, Any]) -> str:
    a = m["attributes"]
    if not a["names"]:
        return "<p>This model predicts no attributes.</p>"
    t75, tc, k = a["at_0.75"], a["at_thresholds"], a["at_k"]
    headline = _table(
        ["", "OP", "OR", "OF1"],
        [
            ["threshold 0.75 (paper)", _num(t75["OP"]), _num(t75["OR"]), _num(t75["OF1"])],
            ["model.json thresholds", _num(tc["OP"]), _num(tc["OR"]), _num(tc["OF1"])],
            ["top-k, k = true labels", _num(k["P@k"]), _num(k["R@k"]), _num(k["F1@k"])],
        ],
        numeric=[False, True, True, True],
    )
    rows = [
        [
            p["name"],
            (_num(p["threshold"], 2), p["threshold"]),
            (_num(p["ap"]), -1 if p["ap"] is None else p["ap"]),
            (_num(p["precision"]), p["precision"]),
            (_num(p["recall"]), p["recall"]),
            (_num(p["f1"]), p["f1"]),
            (f"{p['support']:,}", p["support"]),
        ]
        for p in a["per_attribute"]
    ]
    return (
        f'<div class="cards">{_card("mAP", _num(a["mAP"]))}'
        f"{_card('attributes with positives', str(a['n_attributes_with_positives']))}"
        f"{_card('images without attributes', str(k['n_images_without_labels']))}</div>"
        f"{headline}"
        '<p class="note">OP/OR/OF1: precision and recall over all (image, attribute) pairs. '
        "P@k/R@k: each image predicts its k best attributes, k = its number of true ones; images "
        "with none are left out. mAP: mean average precision over attributes with at least one "
        "positive (AP is shown as – for the others). Click a column to sort.</p>"
        + _table(
            ["attribute", "threshold", "AP", "precision", "recall", "F1", "support"],
            rows,
            numeric=[False] + [True] * 6,
            sortable=True,
            scroll=True,
        )
    )


def _hierarchy(m: dict[str, Any]) -> str:
    h = m["hierarchy"]
    e = h["errors"]
    c, r = h["consistent"], h["raw_argmax"]
    table = _table(
        ["decoding", "hP", "hR", "hF1", "valid paths %"],
        [
            ["consistent (best path)", _num(c["hP"]), _num(c["hR"]), _num(c["hF1"]),
             _pct(h["valid_path_rate"]["consistent"])],
            ["raw per-level argmax", _num(r["hP"]), _num(r["hR"]), _num(r["hF1"]),
             _pct(h["valid_path_rate"]["raw_argmax"])],
        ],
        numeric=[False, True, True, True, True],
    )  # fmt: skip
    total = e["correct"] + e["right_parent_wrong_leaf"] + e["wrong_branch"]
    levels = [b["name"] for b in m["levels"]]
    errors = _table(
        ["outcome", "images", "share of all %"],
        [
            ["right path", e["correct"], _pct(e["correct"] / total if total else 0.0)],
            ["right parent, wrong leaf", e["right_parent_wrong_leaf"],
             _pct(e["right_parent_wrong_leaf"] / total if total else 0.0)],
            ["wrong branch", e["wrong_branch"], _pct(e["wrong_branch"] / total if total else 0.0)],
        ],
        numeric=[False, True, True],
    )  # fmt: skip
    first = ", ".join(
        f"{_e(name)}: {n}" for name, n in zip(levels, e["first_wrong_level"], strict=False)
    )
    return (
        f"{table}"
        '<p class="note">Hierarchical precision/recall (Kiritchenko et al.): each path counts all '
        "its nodes, so a wrong leaf under the right parent still earns the parent.</p>"
        f"<h3>Where the consistent prediction goes wrong</h3>{errors}"
        f'<p class="note">First wrong level of each error: {first}.</p>'
    )


def _calibration(m: dict[str, Any]) -> str:
    """ECE of the path confidence before/after the model's temperatures, and the reliability
    table: per confidence bin, how often the path was right (what a --min-confidence buys)."""
    c = m.get("calibration")
    if not c:  # a metrics.json written before calibration was measured
        return '<p class="note">This evaluation predates the calibration measurement.</p>'
    ece = c["ece_path"]
    temps = ", ".join(f"{_e(k)} {v:.3f}" for k, v in c["temperature"].items())
    cards = [
        _card("ECE, path confidence", _num(ece["after"])),
        _card("ECE at T = 1", _num(ece["before"])),
        _card("mean confidence", _num(c["mean_confidence"])),
    ]
    rows = [
        [
            f"{b['from']:.2f}-{b['to']:.2f}",
            (f"{b['n']:,}", b["n"]),
            (_num(b["confidence"]), b["confidence"]),
            (_pct(b["accuracy"]), b["accuracy"]),
        ]
        for b in c["reliability"]
    ]
    table = _table(
        ["confidence bin", "images", "mean confidence", "path right %"], rows,
        numeric=[False, True, True, True],
    )  # fmt: skip
    return (
        f'<div class="cards">{"".join(cards)}</div>{table}'
        '<p class="note">The path confidence (the product of its levels\' probabilities, what '
        "predict reports and label thresholds) after the model's per-level temperatures "
        f"({temps}). Expected calibration error over {ece['bins']} equal-width bins: the "
        "rows' share-weighted gap between confidence and accuracy; 0 means a confidence of "
        "0.8 is right 80 % of the time.</p>"
    )


def _gap_table(gaps: Sequence[dict[str, Any]]) -> str:
    rows = []
    for g in gaps:
        low, high = g["gap_ci95"]
        rows.append(
            [
                g["value"],
                g["level"],
                (f"{g['n']:,}", g["n"]),
                (_pct(g["accuracy"]), g["accuracy"]),
                (_pct(g["rest_accuracy"]), g["rest_accuracy"]),
                (f"{100 * g['gap']:+.1f} ({100 * low:+.1f} to {100 * high:+.1f})", g["gap"]),
                "yes" if g["meaningful"] else "no",
            ]
        )
    return _table(
        ["value", "level", "images", "acc %", "rest acc %", "gap, points (95 % CI)", "meaningful"],
        rows,
        numeric=[False, False, True, True, True, True, False],
    )


def _slice_values(block: dict[str, Any]) -> str:
    levels = list(next(iter(block["values"].values()))["levels"]) if block["values"] else []
    headers = ["value", "images"]
    for name in levels:
        headers += [f"{name} acc % (95 % CI)", f"{name} macro F1"]
    rows = []
    for value, v in block["values"].items():
        row: list[Any] = [value, (f"{v['n']:,}", v["n"])]
        for name in levels:
            b = v["levels"][name]
            low, high = b["accuracy_ci95"]
            row += [
                (f"{_pct(b['accuracy'])} ({_pct(low)}-{_pct(high)})", b["accuracy"]),
                (_num(b["macro_f1"]), b["macro_f1"]),
            ]
        rows.append(row)
    return _table(
        headers, rows, numeric=[False] + [True] * (len(headers) - 1), sortable=True, scroll=True
    )


def _slices(m: dict[str, Any]) -> str:
    """Per --slice-by name: the largest gaps (is the model worse on one value?), then every
    value's accuracy and macro F1 per level."""
    sl = m.get("slices")
    if not sl:
        return (
            '<p class="note">No slices were asked for: evaluate with --slice-by NAME (a level, '
            "an attribute group or a meta key, e.g. colour) to score each value separately.</p>"
        )
    parts = []
    for name, block in sl.items():
        flagged = sum(g["meaningful"] for g in block["gaps"])
        parts.append(
            f"<h3>by {_e(name)} ({_e(block['kind'])}, {len(block['values'])} values)</h3>"
            f"{_gap_table(block['gaps'])}"
            f'<p class="note">{flagged} of these gaps are meaningful: the 95 % interval of the '
            "difference between the value's accuracy and the rest's (Newcombe's hybrid score "
            "interval) excludes 0, on a slice of at least 10 images. Listed most convincing first. "
            f"{block['n_without_value']:,} images have no {_e(name)}.</p>"
            f"{_slice_values(block)}"
        )
    return "".join(parts)


def _curves(run_dir: Path | None) -> str:
    if run_dir is not None:
        paths = RunPaths(run_dir)
        if paths.curves.is_file():
            uri = "data:image/png;base64," + base64.b64encode(paths.curves.read_bytes()).decode()
            return _img(uri, "training curves")
        fig = curves.plot_curves(paths.read_metrics())
        if fig is not None:
            return _img(_png(fig), "training curves")
    return (
        '<p class="note">This run has no training curves (no curves.png or logs/metrics.csv).</p>'
    )


# -- the page -------------------------------------------------------------------------------------
def render(
    m: dict[str, Any], *, dataset_root: Path | None = None, run_dir: Path | None = None
) -> str:
    """The report page for a metrics.json dict, as one HTML string."""
    run = m.get("run", {})
    ds = m.get("dataset", {})
    bodies = {
        "summary": _summary(m),
        "curves": _curves(run_dir),
        "hierarchy": _hierarchy(m),
        "calibration": _calibration(m),
        "confusion": _confusion(m),
        "confused-pairs": _confused_pairs(m),
        "top-losses": _top_losses(m, dataset_root),
        "per-class": _per_class(m),
        "attributes": _attributes(m),
        "slices": _slices(m),
    }
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in SECTIONS)
    sections = "".join(
        f'<section id="{sid}"><h2>{_e(title)}</h2>{bodies[sid]}</section>'
        for sid, title in SECTIONS
    )
    subtitle = (
        f"model {_e(run.get('model_id', '?'))} · dataset {_e(ds.get('name', '?'))} · "
        f"split {_e(ds.get('split', '?'))} · {ds.get('n_images', 0):,} images"
    )
    footer = " · ".join(
        x for x in ("fashion-tagger", m.get("created"), "every number here is in metrics.json") if x
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Evaluation · {_e(run.get('model_id', ''))}</title><style>{CSS}</style></head>"
        f"<body><header><h1>Evaluation report</h1><p>{subtitle}</p></header><nav>{nav}</nav>"
        f"<main>{sections}</main><footer>{_e(footer)}</footer><script>{JS}</script></body></html>"
    )


def write_report(
    m: dict[str, Any],
    path: str | Path,
    *,
    dataset_root: Path | None = None,
    run_dir: Path | None = None,
) -> Path:
    """Render the report and write it atomically to `path`."""
    path = Path(path)
    write_bytes_atomic(path, render(m, dataset_root=dataset_root, run_dir=run_dir).encode())
    return path
