"""The repository is self-contained: no file cites a document that a clone lacks.

What the code relies on is stated in ``docs/`` (design, methods, datasets,
benchmarks). Research notes that live outside the repository must not be cited, and
every ``docs/<page>.md, '<section>'`` citation must name a page and a heading that
exist, so the citations stay true when pages are edited.
"""

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()

# Documents outside the repository that files used to cite: research notes (by the stem
# of their Markdown name), their folder and an extra results table. Assembled from
# parts so that this file, which must name them, is not itself a citation.
NOTE_STEMS = ("DESIGN", "landscape", "landscape-2026", "anchors", "dspnet", "ssl_alpnet", "engineering")
NOTES_FOLDER = "shared"
EXTRA_TABLE = "published_results" + "_2026"
OUTSIDE = re.compile(
    "|".join(re.escape(stem + ".md") for stem in NOTE_STEMS)
    + f"|{NOTES_FOLDER}/reference|\\.\\./{NOTES_FOLDER}|{EXTRA_TABLE}"
)
# `docs/page.md`, 'Section'  /  docs/page.md, "Section"  (whitespace already collapsed)
SECTION_CITATION = re.compile(r"""(?<![\w/.])docs/(\w+)\.md`{0,2},? ['"]([^'"]+)['"]""")
PAGE_CITATION = re.compile(r"(?<![\w/.])docs/(\w+)\.md")
# Folders a checkout without git may hold that are not part of the repository.
NOT_SOURCE = {".git", ".venv", "venv", "results", "resources", "logs", ".snakemake",
              "__pycache__", ".pytest_cache", "node_modules", "build", "dist"}


def repository_files() -> list[Path]:
    """Tracked files plus new files git does not ignore; without git, a walk of the tree."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, check=True, timeout=60,
        ).stdout
        names = [n for n in out.decode("utf-8", "surrogateescape").split("\0") if n]
    except (OSError, subprocess.SubprocessError):
        names = []
        for folder, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in NOT_SOURCE and not d.endswith(".egg-info")]
            names += [os.path.relpath(os.path.join(folder, f), ROOT) for f in files]
    paths = [ROOT / n for n in names]
    return [p for p in paths if p.is_file() and not p.is_symlink() and p.resolve() != THIS]


def text_files():
    for path in repository_files():
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary (figures, archives)
            continue
        yield path, data.decode("utf-8", "replace")


def headings(page: Path) -> set[str]:
    return {line.lstrip("#").strip() for line in page.read_text(encoding="utf-8").splitlines()
            if line.startswith("#")}


def test_no_file_cites_documents_outside_the_repository():
    offenders = []
    for path, text in text_files():
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, (
        "files cite documents that are not in the repository; state what the code relies on "
        "in docs/ and cite that instead:\n" + "\n".join(offenders))


def test_cited_docs_pages_and_sections_exist():
    missing = []
    for path, text in text_files():
        flat = " ".join(text.split())
        for page in sorted(set(PAGE_CITATION.findall(flat))):
            if not (ROOT / "docs" / f"{page}.md").is_file():
                missing.append(f"{path.relative_to(ROOT)}: docs/{page}.md does not exist")
        for page, section in SECTION_CITATION.findall(flat):
            target = ROOT / "docs" / f"{page}.md"
            if target.is_file() and section not in headings(target):
                missing.append(f"{path.relative_to(ROOT)}: docs/{page}.md has no section {section!r}")
    assert not missing, "\n".join(missing)


def test_the_pattern_catches_what_it_is_meant_to():
    cited = [f"see {stem}.md section 3" for stem in NOTE_STEMS] + [
        f"{NOTES_FOLDER}/reference/x §2.2", f"../{NOTES_FOLDER}/x", f"{EXTRA_TABLE}_additions.csv"]
    assert all(OUTSIDE.search(s) for s in cited)
    assert not OUTSIDE.search("docs/design.md, 'Settings'; docs/methods.md; published_results.csv")
    flat = "as stated in `docs/methods.md`, 'SSL-ALPNet: folds' and docs/datasets.md, \"A b\""
    assert SECTION_CITATION.findall(flat) == [("methods", "SSL-ALPNet: folds"), ("datasets", "A b")]
