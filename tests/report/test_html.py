"""The per-study HTML page: self-contained (no external src/href), every figure embedded, every cell's
privacy statement and provenance shown."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

from PIL import Image

from reproduce.cli import main as cli_main

URL_ATTRS = {"src", "href", "srcset", "poster", "data", "action", "formaction", "background", "xlink:href", "manifest"}


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls, self.tags, self.imgs, self.scripts_with_src, self.csp = [], [], [], 0, None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in URL_ATTRS and v is not None:
                self.urls.append((tag, k, v))
        if tag == "img":
            self.imgs.append(dict(attrs).get("src", ""))
        if tag == "meta" and dict(attrs).get("http-equiv") == "Content-Security-Policy":
            self.csp = dict(attrs)["content"]
        if tag == "script" and dict(attrs).get("src"):
            self.scripts_with_src += 1


def test_report_html_is_self_contained_and_complete(fake_report):
    fake_study, _, paths = fake_report
    index = paths[-1]
    assert index.name == "index.html" and {p.name for p in paths} >= {"table.md", "table.tex", "summary.json"}
    page = index.read_text(encoding="utf-8")
    p = _Collect()
    p.feed(page)
    # nothing to fetch: every URL attribute is a data: URI, no <link>, no external script, no CSS url()
    assert all(v.startswith("data:") for _, _, v in p.urls), [u for u in p.urls if not u[2].startswith("data:")]
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "link" not in p.tags and p.scripts_with_src == 0 and "@import" not in page and "url(" not in page
    assert "default-src 'none'" in p.csp and "img-src data:;" in p.csp and "connect-src" not in p.csp
    # every figure embedded as a decodable PNG
    pngs = [f for f in paths if f.suffix == ".png"]
    assert len(p.imgs) == len(pngs) == 12  # figure 1, GWA, reliability x 4 DP settings
    for src in p.imgs:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.verify()
    # tables, paper comparison, privacy statements (escaped), provenance
    assert 'id="table-val_acc"' in page and 'id="table-test_acc"' in page
    assert "paper 94.05 · Δ -3.05" in page and "validation</b> accuracy" in page
    for cell in fake_study.cells():
        assert cell.id in page
        if cell.private:
            assert f"for {cell.id} &lt;fake&gt;." in page
    assert page.count("Trained WITHOUT differential privacy") == 16
    assert "ab" * 32 in page and "cd" * 32 in page and "dvc.lock" in page  # study hash, data hash, code
    assert "2.13.0" in page and "1.6.0" in page and "1.0.11" in page  # package versions
    assert "<script>" in page and "selfcheck" in page


def test_report_html_notes_missing_reliability_and_cli(fake_study, fake_study_text, write_fake_results, tmp_path):
    results_dir = write_fake_results(fake_study, reliability=False, skip=("embedded-e-7.42-4-1",))
    assert cli_main(["report", str(tmp_path / "studies" / "fake.yaml")]) == 2  # no such study file
    study_file = tmp_path / "studies" / "fake.yaml"
    study_file.parent.mkdir(parents=True)
    study_file.write_text(fake_study_text)
    out = tmp_path / "site"
    args = ["report", str(study_file), "--results", str(results_dir), "--out", str(out)]
    assert cli_main(args) == 1  # a cell is missing
    write_fake_results(fake_study, reliability=False)
    assert cli_main(args) == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "no cell recorded reliability bins" in page and page.count("<img ") == 8  # figure 1 + GWA x 4


def test_report_names_untrained_cells_shortened_with_how_to_train_them(
    fake_study, fake_study_text, write_fake_results, tmp_path, capsys
):
    skipped = tuple(c.id for c in fake_study.cells()[:9])
    results_dir = write_fake_results(fake_study, skip=skipped)
    study_file = tmp_path / "studies" / "fake.yaml"
    study_file.parent.mkdir(parents=True)
    study_file.write_text(fake_study_text)
    # the tables need every cell: the report refuses untrained ones with or without --strict
    for strict in ([], ["--strict"]):
        assert (
            cli_main(
                ["report", str(study_file), "--results", str(results_dir), "--out", str(tmp_path / "site"), *strict]
            )
            == 1
        )
        err = capsys.readouterr().err
        assert err.startswith("error: 9 of 32 cells of study fake have no result"), err
        assert skipped[0] in err and skipped[-1] not in err and "and 4 more" in err, err
        assert "reproduce run studies/fake.yaml" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "site").exists() and not (results_dir / "table.md").exists()
