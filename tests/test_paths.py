"""The result tree as code (fsmis.paths): every template fills and parses back, the
names the library writes are the ones the rules declare, and no rule spells a path of
the tree by hand."""

import re
from pathlib import Path

import pytest

from fsmis import paths

REPO = Path(__file__).resolve().parents[1]

# one value per wildcard, each shaped like the real ones
SAMPLE = {
    "source": "chaos_mr",
    "ds": "nifti_folder-mine-1a2b3c",
    "exp": "demo",
    "case": "phantom_001",
    "method": "ssl_alpnet",
    "setting": "2all",
    "fold": "3",
    "seed": "42",
    "group": "left_kidney+right_kidney",
    "protocol": "full",
    "file": "CHAOS_Train_Sets.zip",
    "archive": "CHAOS_Train_Sets",
    "weights": "deeplabv3_resnet101_coco",
    "config_hash": "0a1b2c3d4e5f",
    "name": "dice_bars",
    "ext": "png",
}


@pytest.mark.parametrize("kind", list(paths.TEMPLATES))
def test_every_template_round_trips(kind):
    values = {name: SAMPLE[name] for name in paths.wildcards(kind)}
    path = paths.fill(kind, **values)
    assert "{" not in path
    assert paths.parse(path) == (kind, values)
    assert paths.match(kind, path) == values
    # a job may see the same path under a folder (absolute, --directory)
    assert paths.parse(f"/scratch/run/{path}") == (kind, values)


def test_templates_are_the_workflows_paths():
    assert paths.model == "results/{exp}/{method}/setting{setting}/seed{seed}/fold{fold}/{group}/model.pt"
    assert paths.metrics == "results/{exp}/{method}/setting{setting}/seed{seed}/fold{fold}/metrics.json"
    assert paths.image == "results/data/{ds}/preprocessed/{case}_image.nii.gz"
    assert paths.superpixels == "results/data/{ds}/superpixels/{case}.nii.gz"
    assert paths.log_train == "logs/train/{exp}/{method}/setting{setting}/seed{seed}/fold{fold}/{group}.log"
    assert paths.benchmark_evaluate == (
        "results/benchmarks/evaluate/{exp}/{method}/setting{setting}/seed{seed}/fold{fold}.tsv")
    assert paths.fill("report_slice", exp="demo", name="dice", setting="1", protocol="oracle", ext="csv") == (
        "results/demo/report/dice_setting1_oracle.csv")
    with pytest.raises(AttributeError):
        paths.no_such_kind  # noqa: B018


def test_protocols_and_settings_agree_with_the_library():
    from fsmis.protocols import PROTOCOLS
    from fsmis.settings import SETTINGS

    assert set(paths.PROTOCOLS) == set(PROTOCOLS)
    assert set(paths.SETTINGS) == set(SETTINGS)


def test_prediction_names():
    folder = "results/demo/panet/setting1/seed0/fold0/predictions"
    assert paths.prediction(folder, "c1", "oracle") == f"{folder}/c1.nii.gz"
    assert paths.prediction(folder, "c1", "full") == f"{folder}/c1_full.nii.gz"
    assert paths.prediction(folder, "c1", "full", source_grid=True) == f"{folder}/source_grid/c1_full.nii.gz"
    # a case id with underscores is not mistaken for a protocol suffix, and back
    assert paths.parse(f"{folder}/phantom_000.nii.gz") == (
        "prediction_oracle", {"exp": "demo", "method": "panet", "setting": "1", "seed": "0", "fold": "0",
         "case": "phantom_000"})
    assert paths.parse(f"{folder}/phantom_000_full.nii.gz")[1]["case"] == "phantom_000"
    with pytest.raises(ValueError):
        paths.fill("prediction", exp="demo", method="panet", setting="1", seed="0", fold="0", case="c",
                   protocol="oracle")


def test_files_within_and_beside_a_declared_one(tmp_path):
    model = tmp_path / "any" / "model.pt"
    assert paths.beside(model, "checkpoint") == str(tmp_path / "any" / "checkpoint.pt")
    assert paths.beside(model, "stale_checkpoint", config_hash="abc") == str(tmp_path / "any" / "checkpoint.abc.pt")
    assert paths.beside("results/demo/m/setting1/seed0/fold0/metrics.json", "per_case") == (
        "results/demo/m/setting1/seed0/fold0/per_case.tsv")
    assert paths.within("out", "report_file", name="qualitative", ext="png") == "out/qualitative.png"
    assert paths.stem("report_slice", name="stats", setting="2", protocol="full") == "stats_setting2_full"
    assert paths.base_of("x/y/train_log.tsv", "train_log") == ("x/y", {})
    with pytest.raises(ValueError, match="not a file whose folder"):
        paths.beside(tmp_path / "notes.txt", "checkpoint")
    assert paths.train_label("results/demo/panet/setting2/seed3/fold1/liver+spleen/train_log.tsv") == (
        "panet setting2 seed3 fold1 liver+spleen")


def test_bad_wildcards_and_foreign_paths_are_refused():
    with pytest.raises(ValueError, match="not given"):
        paths.fill("metrics", exp="demo", method="m", setting="1")
    with pytest.raises(ValueError, match="no wildcard"):
        paths.fill("splits", exp="demo", fold="0")
    with pytest.raises(ValueError, match="does not match"):
        paths.fill("metrics", exp="demo", method="m", setting="3", seed="0", fold="0")
    with pytest.raises(ValueError, match="does not match"):
        paths.fill("splits", exp="data")  # results/data/ is the datasets' folder
    with pytest.raises(ValueError, match="unknown kind"):
        paths.fill("nope")
    with pytest.raises(ValueError, match="not a path of the result tree"):
        paths.parse("somewhere/else.txt")
    assert paths.partial("metrics", exp="demo") == (
        "results/demo/{method}/setting{setting}/seed{seed}/fold{fold}/metrics.json")


def test_rules_spell_no_path_of_the_tree_by_hand():
    """Input/output/log/benchmark strings of the rules come from fsmis.paths (common.smk
    holds the configuration, not rules, and is left out)."""
    literal = re.compile(r"""["'](?:results|resources|logs)/""")
    offenders = []
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        if smk.name == "common.smk":
            continue
        for number, line in enumerate(smk.read_text(encoding="utf-8").splitlines(), 1):
            if literal.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{smk.name}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_library_and_job_scripts_build_no_tree_path_by_hand():
    """The known ways of taking a path apart or rebuilding one beside another are gone
    from the modules that read and write the result tree."""
    pattern = re.compile(r"\.parts\b|parents\[|\.parent\.name|split\(\"/\"\)|\"checkpoint\.pt\"")
    files = [REPO / "src" / "fsmis" / "train.py", *sorted((REPO / "src" / "fsmis" / "report").glob("*.py"))]
    files += sorted((REPO / "src" / "fsmis" / "stages").glob("*.py"))
    files += sorted((REPO / "workflow" / "scripts").glob("*.py"))
    offenders = [f"{f.name}:{n}: {line.strip()}" for f in files
                 for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
                 if pattern.search(line) and f.name != "fsmis_job.py"]
    assert not offenders, "\n".join(offenders)
