"""One self-contained HTML page per study: tables, figures (base64 data URIs), privacy statements and
provenance of every cell. Inline CSS, no external request of any kind: a Content-Security-Policy
forbids every fetch except ``data:`` images, and allows exactly one inline script (by its hash) - a
self-check that writes into the page how many figures decoded, how many cells each table has and how
many network resources were loaded (tests read it from a headless browser; readers see it in the
footer).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections import Counter
from pathlib import Path

from reproduce.device import device_label
from reproduce.records.result import CellResult
from reproduce.report.diagnostics import SUMMARY_KEYS, DiagnosticsSummary
from reproduce.report.figures import FigureFile
from reproduce.report.grouping import setting_label
from reproduce.report.sections import Report
from reproduce.report.table import (
    Table,
    TableCell,
    aug_label,
    caption,
    column_blocks,
    fmt_mean_std,
    fmt_value,
    metric_title,
)
from reproduce.study import GRID_AXES, NON_PRIVATE, Study

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;color:#1b1b1b}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:12.5px}
th,td{border:1px solid #d5d5d5;padding:3px 6px;vertical-align:top}
th{background:#f3f3f3;font-weight:600}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
td.best{background:#eef6ee}
.paper{display:block;color:#555;font-size:11px}
.caption,figcaption{color:#444;font-size:12.5px;max-width:100ch}
.caveat{color:#8a4b00}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:11.5px}
.warn{color:#b00020;font-weight:600}
figure{margin:1em 0 2em}figure img{max-width:100%;height:auto;border:1px solid #eee}
details{margin:.5em 0}summary{cursor:pointer;font-weight:600}
.statement{max-width:80ch}
footer{margin-top:3em;color:#666;font-size:12px;border-top:1px solid #ddd;padding-top:.5em}
"""

# Runs on load; only reads the page and writes the result into #selfcheck (allowed by its CSP hash).
SELF_CHECK_JS = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var tables = {};
  document.querySelectorAll("table[data-check]").forEach(function (t) {
    tables[t.id] = {rows: t.tBodies[0].rows.length, cells: t.tBodies[0].querySelectorAll("td").length};
  });
  var resources = (performance.getEntriesByType ? performance.getEntriesByType("resource") : [])
    .filter(function (e) { return e.name.indexOf("data:") !== 0; }).length;
  var result = {
    images: imgs.length,
    images_decoded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    image_widths: imgs.map(function (i) { return i.naturalWidth; }),
    tables: tables,
    external_resources: resources
  };
  var out = document.getElementById("selfcheck");
  out.textContent = JSON.stringify(result);
  out.setAttribute("data-status", result.images === result.images_decoded && resources === 0 ? "ok" : "failed");
});
"""


def _e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(SELF_CHECK_JS.encode()).digest()).decode()
    return (
        f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
        "base-uri 'none'; form-action 'none'"
    )


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _eps_name(e) -> str:
    return "non-DP" if e == NON_PRIVATE else f"DP ε={float(e):g}"


def render_table(study: Study, table: Table, *, table_id: str) -> str:
    gaps = table.gap_columns
    blocks = column_blocks([_eps_name(c.epsilon) for c in table.columns])
    blocks += column_blocks([f"DP gap ε={float(c.epsilon):g}" for c in gaps])
    head1 = "".join(f'<th rowspan="2">{_e(h)}</th>' for h in ("dataset", "group", *table.axes, "parameters"))
    head1 += "".join(f'<th colspan="{n}">{_e(name)}</th>' for name, n in blocks)
    head2 = "".join(f"<th>{_e(aug_label(c.multiplicity))}</th>" for c in (*table.columns, *gaps))
    body = []
    for r in table.rows:
        params = f"{r.parameters:,}" if r.parameters is not None else "n/a"
        tds = [
            f"<td>{_e(r.dataset)}</td>",
            f"<td>{_e(r.group)}</td>",
            *(f"<td>{_e(v)}</td>" for _, v in r.axes),
            f'<td class="num" title="widths {_e("-".join(map(str, r.widths)))}">{_e(params)}</td>',
        ]
        tds += [_table_cell(s) for s in r.cells]
        tds += [f'<td class="num">{_e(fmt_value(g.value))}</td>' for g in r.gaps]
        body.append("<tr>" + "".join(tds) + "</tr>")
    caveats = table.paper.caveats if table.paper else ()
    cav = "".join(f'<li class="caveat">Caveat: {_e(c)}.</li>' for c in caveats)
    return (
        f"<h3>{_e(metric_title(table.metric).capitalize())} (%)</h3>"
        f'<p class="caption">{_e(caption(study, table))}</p>'
        + (f"<ul>{cav}</ul>" if cav else "")
        + f'<table id="{_e(table_id)}" data-check="1"><thead><tr>{head1}</tr><tr>{head2}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _table_cell(s: TableCell) -> str:
    text = _e(fmt_mean_std(s))
    if s.best and s.mean is not None:
        text = f"<b>{text}</b>"
    if s.paper is not None:
        text += f'<span class="paper">paper {_e(fmt_value(s.paper))} · Δ {_e(fmt_value(s.delta, signed=True))}</span>'
    seeds = ", ".join(f"{100 * v:.2f}" for v in s.values)
    return (
        f'<td class="{"num best" if s.best else "num"}" title="{_e(s.column.label)}; per seed: {_e(seeds)}">{text}</td>'
    )


def _short(x, n: int = 12) -> str:
    return _e(x[:n] + "…") if isinstance(x, str) and len(x) > n else _e(x)


def _num(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def render_privacy(study: Study, results: dict[str, CellResult]) -> str:
    rows = []
    for c in study.cells():
        r = results.get(c.id)
        if r is None:
            rows.append(f'<tr><td class="mono">{_e(c.id)}</td><td colspan="6" class="warn">no result</td></tr>')
            continue
        p = r.privacy
        if p.private:
            nums = [
                _num(p.epsilon_spent, ".3f"),
                _num(p.delta, "g"),
                _num(p.noise_multiplier, ".4f"),
                _num(p.sample_rate, ".6g"),
                _num(p.steps, "d"),
            ]
        else:
            nums = ["—"] * 5
        rows.append(
            f'<tr><td class="mono">{_e(c.id)}</td>'
            + "".join(f'<td class="num">{_e(n)}</td>' for n in nums)
            + f'<td class="statement">{_e(r.statement or "no privacy statement recorded")}</td></tr>'
        )
    return (
        '<table id="privacy" data-check="1"><thead><tr><th>cell</th><th>ε spent</th><th>δ</th><th>noise σ</th>'
        "<th>sample rate q</th><th>steps</th><th>privacy statement</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def render_provenance(study: Study, results: dict[str, CellResult]) -> str:
    rows, versions, warnings = [], {}, []
    # The page is a versioned output: only what an identical rerun reproduces. The code is the
    # dependency hashes in dvc.lock; timings, commit and host are in each cell's run.json.
    hashes = set()
    for c in study.cells():
        r = results.get(c.id)
        if r is None:
            continue
        pv, data = r.provenance, r.provenance.data
        hashes.add(pv.study_sha256)
        for k, v in pv.versions.items():
            versions.setdefault(k, Counter())[str(v)] += 1
        rows.append(
            f'<tr><td class="mono">{_e(c.id)}</td><td class="num">{_e(pv.seed)}</td>'
            f'<td class="mono" title="{_e(pv.study_sha256)}">{_short(pv.study_sha256)}</td>'
            f'<td class="mono" title="{_e(data.sha256)}">{_e(data.name)}: {_short(data.sha256)}</td>'
            f"<td>{_e(data.source)}</td><td>{_e(device_label(pv.device))}</td></tr>"
        )
    if len(hashes) > 1:
        warnings.append("cells were produced from different versions of the study file (study_sha256 differs)")
    vrows = []
    for k, cnt in sorted(versions.items()):
        text = ", ".join(f"{v} ({n} cells)" if len(cnt) > 1 else v for v, n in cnt.items())
        flag = ' <span class="warn">differs between cells</span>' if len(cnt) > 1 else ""
        vrows.append(f'<tr><td>{_e(k)}</td><td class="mono">{_e(text)}{flag}</td></tr>')
    vrows = "".join(vrows)
    warn = "".join(f'<p class="warn">Warning: {_e(w)}.</p>' for w in warnings)
    return (
        warn + '<h3>Package versions</h3><table id="versions"><thead><tr><th>package</th><th>version</th></tr></thead>'
        f"<tbody>{vrows}</tbody></table>"
        '<h3>Per cell</h3><table id="provenance" data-check="1"><thead><tr><th>cell</th><th>seed</th>'
        "<th>study sha256</th><th>data sha256</th><th>data source</th><th>device</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table><p>Code: the dependency hashes in this study's "
        "<code>dvc.lock</code>; timings, commit and host of each run: "
        "<code>results/&lt;study&gt;/cells/&lt;cell&gt;/run.json</code> (not versioned).</p>"
    )


def render_diagnostics(summary: DiagnosticsSummary | None) -> str:
    """The diagnostics summary (``reproduce.report.diagnostics``): a row per DP line and reference, then
    the means per value of each DP-only axis; empty when no result recorded step diagnostics."""
    if summary is None:
        return ""
    rows = summary.rows
    axes = list(dict.fromkeys(p for r in rows for p, _ in (*r.where, *r.axes)))
    head = "".join(
        f"<th>{_e(h)}</th>"
        for h in ("dataset", "ε", "group", *axes, "n", "test_acc", *SUMMARY_KEYS, "max_grad_norm_last")
    )
    body = []
    for r in rows:
        values = dict((*r.where, *r.axes))
        tds = [
            _e(r.dataset),
            _e(_eps_name(r.epsilon)),
            _e(r.group),
            *(_e("" if values.get(a) is None else values[a]) for a in axes),
            str(r.n),
            _num(None if r.test_acc is None else 100 * r.test_acc, ".1f"),
            *(_num(r.step_means[k], ".3g") for k in SUMMARY_KEYS),
            _num(r.max_grad_norm_last, ".3g"),
        ]
        body.append("<tr>" + "".join(f"<td>{t}</td>" for t in tds) + "</tr>")
    means = []
    for axis, per in summary.axis_means.items():
        parts = [
            f"{_e(m.value)}: {100 * m.test_acc:.1f}% test accuracy, {m.share_clipped:.2f} clipped"
            for m in per
            if m.test_acc is not None and m.share_clipped is not None
        ]
        if parts:
            means.append(f"<li><b>{_e(axis)}</b> (mean over the other axes' DP rows): {'; '.join(parts)}</li>")
    return "\n".join(
        [
            '<table class="diagnostics"><thead><tr>' + head + "</tr></thead><tbody>",
            *body,
            "</tbody></table>",
            '<p class="caption">Means over seeds of the test accuracy (%) and, over logged steps, of each diagnostic; '
            "max_grad_norm_last: the clipping norm at the last logged step. Non-private rows have only the update's "
            "cosine.</p>",
            f"<ul>{''.join(means)}</ul>" if means else "",
        ]
    )


def render_scores(rows) -> str:
    """The attribution scores (``reproduce.report.attribution.score_rows``) as an HTML table."""
    if not rows:
        return '<p class="caption">None: no attribution scores (the attribute stage has not run).</p>'
    names = list(dict.fromkeys(n for r in rows for n in r.values))
    head = "".join(f"<th>{_e(n)}</th>" for n in ["dataset", "group", "setting", "n", *names])
    body = "".join(
        "<tr>"
        + "".join(f"<td>{_e(x)}</td>" for x in [r.dataset, r.group, r.setting, r.n])
        + "".join(f"<td>{'n/a' if r.values.get(n) is None else f'{r.values[n]:.3f}'}</td>" for n in names)
        + "</tr>"
        for r in rows
    )
    return (
        f'<table id="attribution-scores"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        '<p class="caption">Means over the seeded selection of test images (4 per class), then over seeds: '
        "colocation = rank correlation of the final layer's response with Grad-CAM; top_k = their top-10% "
        "overlap; object_share = share of the map inside the object (embedded data only; object_area = a "
        "uniform map's share); fir = mean filter norm over every convolution.</p>"
    )


def render_audit(study: Study, rows, figures: list[FigureFile]) -> str:
    """The privacy-audit section (``reproduce.report.audit``): violations first, the table, the figures."""
    from reproduce.report.audit import caption as audit_caption
    from reproduce.report.audit import fmt_epsilon, verdict_text, violation_lines

    parts = [
        "<h2>Privacy audit: measured lower bound vs the accountant's epsilon</h2>",
        f'<p class="caption">{_e(audit_caption(study))}</p>',
    ]
    parts += [f'<p class="warn">{_e(line.replace("**", ""))}</p>' for line in violation_lines(rows)]
    if not rows:
        parts.append('<p class="caption">None: no audited cell has a result yet.</p>')
        return "\n".join(parts)
    head = "".join(
        f"<th>{_e(h)}</th>"
        for h in (
            "dataset",
            "group",
            "setting",
            "canaries",
            "n",
            "accountant ε",
            "audit ε lower bound",
            "most m can show",
            "verdict",
        )
    )
    body = []
    for r in rows:
        per_seed = "; ".join(f"{v.cell}: {v.record.epsilon_lower:.3f}" for v in r.verdicts)
        verdict = f'<td class="warn">{_e(verdict_text(r))}</td>' if r.violations else f"<td>{_e(verdict_text(r))}</td>"
        body.append(
            "<tr>"
            + "".join(
                f"<td>{_e(x)}</td>"
                for x in (r.dataset, r.group, setting_label(r.epsilon, r.multiplicity, r.axes), r.canaries, r.n)
            )
            + f'<td class="num">{_e(fmt_epsilon(r.accountant))}</td>'
            f'<td class="num" title="per seed: {_e(per_seed)}">{_e(fmt_epsilon(r.bound))}</td>'
            f'<td class="num">{r.bound_max:.3f}</td>{verdict}</tr>'
        )
    parts.append(
        f'<table id="audit" data-check="1"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )
    parts += [
        f'<figure><img src="{data_uri(f.path)}" alt="{_e(f.title)}">'
        f"<figcaption><b>{_e(f.title)}.</b> {_e(f.caption)}</figcaption></figure>"
        for f in figures
        if f.kind == "audit"
    ]
    return "\n".join(parts)


def _intro(report: Report) -> list[str]:
    study, g = report.study, report.study.grid
    axes = " × ".join(
        [*(f"{len(getattr(g, a))} {a}" for a in GRID_AXES), *(f"{len(v)} {a}" for a, v in g.axes.items())]
    )
    paper = next((t.paper for t in report.tables if t.paper), None)
    intro = [
        f"<p>{_e(study.description)}</p>" if study.description else "",
        f"<p>{len(study.cells())} cells ({_e(axes)}); results for "
        f"{sum(c.id in report.results for c in study.cells())} of them. "
        'Values are read from <span class="mono">results/' + _e(study.name) + "/cells/&lt;cell&gt;/result.json</span>; "
        "this page was generated from them without training.</p>",
    ]
    if paper:
        intro.append(
            f'<p>Published numbers: {_e(paper.citation)} (<span class="mono">{_e(paper.url)}</span>). '
            "The paper's Table 1 reports <b>validation</b> accuracy, so the comparison is with our "
            '<span class="mono">val_acc</span>; test accuracy is shown separately.</p>'
        )
    return intro


FIGURE_SECTIONS = (
    ("figure1", "Figure 1: accuracy vs model size, gradient sparsity (DP)"),
    ("alignment", "Gradient-weight alignment during training"),
    ("reliability", "Reliability diagrams (DP, test split)"),
    ("diagnostics", "Optimisation diagnostics: clipping, noise and the update over steps"),
    ("trends", "Accuracy over epsilon and over training compute"),
    ("figure2", "Figure 2: where the models look (Grad-CAM, guided backprop)"),
)


def _no_figure(study: Study, kind: str) -> str:
    """Why a figure section is empty."""
    return (
        "no attribution maps (the attribute stage has not run)"
        if kind == "figure2"
        else "no results with a training-compute estimate"
        if kind == "trends"
        else "the study has no DP cells"
        if not any(e != NON_PRIVATE for e in study.grid.epsilon)
        else "no cell recorded reliability bins (metrics_detail.reliability_test)"
        if kind == "reliability"
        else "no cell recorded per-epoch alignment (epochs[*].gwa)"
        if kind == "alignment"
        else "no cell recorded step diagnostics (results written before they existed)"
        if kind == "diagnostics"
        else "no DP results"
    )


def _figure_sections(report: Report, figures: list[FigureFile]) -> list[str]:
    out = []
    for kind, title in FIGURE_SECTIONS:
        items = [f for f in figures if f.kind == kind]
        out.append(f"<h2>{_e(title)}</h2>")
        if not items:
            out.append(f'<p class="caption">None: {_e(_no_figure(report.study, kind))}.</p>')
        if kind == "diagnostics":
            out.append(render_diagnostics(report.diagnostics))
        out += [
            f'<figure><img src="{data_uri(f.path)}" alt="{_e(f.title)}">'
            f"<figcaption><b>{_e(f.title)}.</b> {_e(f.caption)}</figcaption></figure>"
            for f in items
        ]
    return out


def render_page(report: Report, figures: list[FigureFile]) -> str:
    """index.html of ``report`` with ``figures`` embedded."""
    study = report.study
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{_e(_csp())}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(study.name)}: reproduce report</title><style>{CSS}</style></head><body>",
            f'<h1>Study <span class="mono">{_e(study.name)}</span></h1>',
            *_intro(report),
            "<h2>Table 1</h2>",
            *[render_table(study, t, table_id=f"table-{t.metric}") for t in report.tables],
            '<p class="caption">DP gap = non-DP mean minus DP mean at the same augmentation (percentage points). '
            "Hover a cell for its per-seed values.</p>",
            # Audited studies only: other studies' pages stay as they were.
            *([render_audit(study, report.audit, figures)] if study.audit is not None else []),
            *_figure_sections(report, figures),
            "<h3>Attribution scores</h3>",
            render_scores(report.scores),
            "<h2>Privacy statements</h2>",
            render_privacy(study, report.results),
            "<h2>Provenance</h2>",
            render_provenance(study, report.results),
            '<footer>Generated by <span class="mono">reproduce.report</span>. Self-check: '
            '<span id="selfcheck" class="mono" data-status="pending">(needs JavaScript)</span></footer>',
            f"<script>{SELF_CHECK_JS}</script>",
            "</body></html>",
            "",
        ]
    )


def write_html(report: Report, figures: list[FigureFile], path: Path) -> Path:
    """Write ``render_page(report, figures)`` to ``path`` (atomically); returns ``path``."""
    from reproduce.atomic import write_text_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, render_page(report, figures))
    return path


def selfcheck_from_dom(dom: str) -> dict | None:
    """The self-check JSON from a dumped DOM (None if the script did not run)."""
    import re

    m = re.search(r'<span id="selfcheck"[^>]*data-status="(ok|failed)"[^>]*>([^<]*)</span>', dom)
    if not m:
        return None
    return {"status": m.group(1), **json.loads(html.unescape(m.group(2)))}
