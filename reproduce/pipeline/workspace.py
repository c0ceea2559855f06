"""One workspace per cell: the main repository's files at their working-tree state, sharing its DVC cache.

``.reproduce/workspaces/<study>/<cell>/`` is a ``git worktree`` of the main repository at HEAD (so a
cell's provenance records the right commit, and "dirty" exactly when the main working tree was),
overlaid with the main working tree's current files (tracked and untracked-not-ignored, so
uncommitted edits run as they are in the main workspace and hash the same there). Its
``.dvc/config.local`` points ``cache.dir`` at the main repository's cache and turns DVC's git
integration off, so a job's ``dvc repro`` commits its outputs and its run-cache entry straight into
the shared cache. Datasets (``data/<name>``) are hard links to the main workspace's files (copies
across file systems). Without git the workspace is a plain copy.

A workspace is kept between runs: a killed cell resumes from the per-epoch checkpoint it left under
``checkpoints/`` there. The main repository's DVC skips these directories (each holds its own
``.dvc``, which DVC treats as a separate repository), and ``.reproduce/.gitignore`` keeps git out.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
from pathlib import Path

from reproduce.errors import ReproduceError

STATE_DIR = ".reproduce"
# Never overlaid from the main working tree: a workspace's lock records what ran there (git resets it
# to HEAD's when HEAD moves, which only makes DVC look at the cell afresh).
OWN_FILES = {"dvc.lock"}
SKIP_DIRS = {".git", ".dvc/cache", ".dvc/tmp", STATE_DIR, ".venv", "results", "checkpoints", "data"}


def state_dir(root: Path) -> Path:
    """``<root>/.reproduce`` (created, and ignored by git)."""
    d = Path(root) / STATE_DIR
    d.mkdir(parents=True, exist_ok=True)
    ignore = d / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# reproduce run: workspaces, job records and logs (never committed)\n*\n")
    return d


def _git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise ReproduceError(f"git {' '.join(args)} failed in {root}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _has_head(root: Path) -> bool:
    if not shutil.which("git"):
        return False
    proc = _git(root, "rev-parse", "--verify", "-q", "HEAD", check=False)
    top = _git(root, "rev-parse", "--show-toplevel", check=False)
    return proc.returncode == 0 and top.returncode == 0 and Path(top.stdout.strip()).resolve() == Path(root).resolve()


def _same(src: Path, dst: Path) -> bool:
    try:
        a, b = src.stat(), dst.stat()
    except FileNotFoundError:
        return False
    if a.st_size != b.st_size:
        return False
    if a.st_mtime_ns == b.st_mtime_ns:
        return True
    return filecmp.cmp(src, dst, shallow=False)


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or (dst.exists() and not dst.is_file()):
        shutil.rmtree(dst) if dst.is_dir() and not dst.is_symlink() else dst.unlink()
    tmp = dst.with_name(f".{dst.name}.reproduce-tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _link_tree(src: Path, dst: Path) -> None:
    """Make ``dst`` hold exactly ``src``'s files, as hard links where possible."""
    wanted = set()
    for dirpath, _, files in os.walk(src):
        for name in files:
            s = Path(dirpath) / name
            rel = s.relative_to(src)
            wanted.add(rel)
            d = dst / rel
            try:
                if d.exists() and os.path.samefile(s, d):
                    continue
            except OSError:
                pass
            if d.exists() and _same(s, d):
                continue
            d.parent.mkdir(parents=True, exist_ok=True)
            tmp = d.with_name(f".{d.name}.reproduce-tmp")
            tmp.unlink(missing_ok=True)
            try:
                os.link(s, tmp)
            except OSError:
                shutil.copy2(s, tmp)
            os.replace(tmp, d)
    if dst.is_dir():
        for dirpath, _, files in os.walk(dst):
            for name in files:
                p = Path(dirpath) / name
                if p.relative_to(dst) not in wanted:
                    p.unlink()


class Workspaces:
    """Creates and refreshes the workspaces of one study in the repository at ``root``."""

    def __init__(self, root: Path, study: str, *, cache: Path):
        self.root = Path(root).resolve()
        self.base = state_dir(self.root) / "workspaces" / study
        self.cache = Path(cache).resolve()
        self.git = _has_head(self.root)
        self._files: list[str] | None = None
        self._deleted: set[str] = set()
        self._head: str | None = None

    def path(self, cell_id: str) -> Path:
        return self.base / cell_id

    # -- what the main working tree holds ------------------------------------------------------
    def _scan(self) -> None:
        if self._files is not None:
            return
        if self.git:
            self._head = _git(self.root, "rev-parse", "HEAD").stdout.strip()
            listed = _git(self.root, "ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout
            self._deleted = set(filter(None, _git(self.root, "ls-files", "-z", "--deleted").stdout.split("\0")))
            files = [f for f in dict.fromkeys(filter(None, listed.split("\0"))) if f not in self._deleted]
        else:
            files = []
            for dirpath, dirs, names in os.walk(self.root):
                rel_dir = Path(dirpath).relative_to(self.root)
                dirs[:] = [d for d in dirs if (rel_dir / d).as_posix() not in SKIP_DIRS and d != "__pycache__"]
                files += [(rel_dir / n).as_posix() for n in names]
        self._files = [
            f
            for f in files
            if Path(f).name not in OWN_FILES
            and (self.root / f).is_file()
            and not f.startswith(STATE_DIR + "/")
            and not (f.startswith("data/") and f.count("/") >= 2)
        ]  # datasets: linked, not copied

    # -- one workspace ---------------------------------------------------------------------------
    def prepare(self, cell_id: str, datasets: list[str]) -> Path:
        """Create or refresh the workspace of ``cell_id``; return its path."""
        self._scan()
        ws = self.path(cell_id)
        if self.git:
            self._ensure_worktree(ws)
        else:
            ws.mkdir(parents=True, exist_ok=True)
        self._overlay(ws)
        self._configure_dvc(ws)
        for name in datasets:
            src = self.root / "data" / name
            if not src.exists():
                raise ReproduceError(f"dataset directory {src} is missing (run `reproduce fetch {name}`)")
            _link_tree(src, ws / "data" / name)
        return ws

    def _ensure_worktree(self, ws: Path) -> None:
        if (ws / ".git").exists():
            head = _git(ws, "rev-parse", "HEAD", check=False).stdout.strip()
            if head != self._head:
                _git(ws, "checkout", "-q", "--force", "--detach", self._head)
            return
        if ws.exists():
            shutil.rmtree(ws)
        ws.parent.mkdir(parents=True, exist_ok=True)
        _git(self.root, "worktree", "prune")
        _git(self.root, "worktree", "add", "-q", "--force", "--detach", str(ws), self._head)

    def _overlay(self, ws: Path) -> None:
        manifest = ws / ".dvc" / "tmp" / "reproduce-overlay.json"
        before = set(json.loads(manifest.read_text())) if manifest.exists() else set()
        for rel in self._files:
            src, dst = self.root / rel, ws / rel
            if not _same(src, dst):
                _copy(src, dst)
        for rel in (before - set(self._files)) | self._deleted:
            (ws / rel).unlink(missing_ok=True)
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(sorted(self._files)))

    def _configure_dvc(self, ws: Path) -> None:
        (ws / ".dvc").mkdir(exist_ok=True)
        text = (
            "# written by `reproduce run`: share the main repository's cache (and run-cache)\n"
            "[core]\n    no_scm = true\n"
            f"[cache]\n    dir = {self.cache.as_posix()}\n"
        )
        local = ws / ".dvc" / "config.local"
        if not local.exists() or local.read_text() != text:
            local.write_text(text)
