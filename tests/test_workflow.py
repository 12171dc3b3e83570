"""Workflow tests: the DAG a config implies (dry-runs), lint, config validation.

These run `snakemake` in a subprocess against a temporary working directory. Parsing
the workflow imports neither torch nor the fsmis library, so they need no GPU and no
data, and take a few seconds each. The end-to-end run lives elsewhere.
"""

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "config.yaml"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def test_demo_dry_run_builds_the_whole_experiment(tmp_path, dry_run):
    counts = dry_run(tmp_path)
    # 10 phantom cases; 3 folds x setting "1"; methods ssl_alpnet + dspnet on 2D
    # superpixels and adnet on 3D supervoxels, baselines untrained (trained for 0
    # steps) + mask_transfer (evaluated only).
    assert counts == {
        "generate_phantom": 1,
        "canonical": 10,
        "case_table": 1,
        "preprocess": 10,
        "classmap": 1,
        "superpixels": 10,
        "supervoxels": 10,
        "splits": 1,
        "train": 3 * 4,
        "evaluate": 3 * 5,
        "report": 1,
        "all": 1,
    }
    # A dry-run runs no onstart handler: nothing, MLflow store included, is written.
    assert not (tmp_path / "results").exists()


def test_config_overrides_shrink_the_dag(tmp_path, dry_run):
    counts = dry_run(
        tmp_path,
        "--config",
        "folds=[0]",
        "methods=[panet]",
        "settings=[1, 2all]",
        "baselines=[mask_transfer]",
    )
    # 1 fold x 2 settings. Only panet trains (no `untrained` baseline); panet and
    # mask_transfer are evaluated. All cases still feed every fold.
    assert counts["train"] == 1 * 2 * 1
    assert counts["evaluate"] == 1 * 2 * 2
    assert counts["preprocess"] == 10
    assert counts["report"] == 1


def test_setting_2_trains_one_model_per_label_group(tmp_path, snakemake, dry_run):
    counts = dry_run(
        tmp_path, "--config", "folds=[0, 1]", "methods=[ssl_alpnet]", "settings=[1, 2, 2all, 2any]",
        "baselines=[mask_transfer]",
    )
    # per fold: setting 1 one model, setting 2 one per label group (kidneys,
    # liver+spleen), settings 2all and 2any one model; each setting evaluated once per method
    assert counts["train"] == 2 * (1 + 2 + 1 + 1)
    assert counts["evaluate"] == 2 * 4 * 2
    result = snakemake(
        tmp_path, "--dry-run", "--config", "folds=[0]", "methods=[ssl_alpnet]", "settings=[2]",
        "baselines=[]", "--", "results/demo/ssl_alpnet/setting2/seed1234/fold0/metrics.json",
    )
    out = result.stdout + result.stderr
    assert "setting2/seed1234/fold0/left_kidney+right_kidney/model.pt" in out
    assert "setting2/seed1234/fold0/liver+spleen/model.pt" in out


def test_pseudo_labels_follow_the_method_or_the_config(tmp_path, dry_run):
    demo = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    base = {**demo, "folds": [0], "methods": ["ssl_alpnet"], "baselines": []}
    # the SSL-ALPNet lineage trains on 2D superpixels: no supervoxel job
    counts = dry_run(tmp_path, config=base)
    assert counts["superpixels"] == 10 and "supervoxels" not in counts
    # train.pseudo_labels overrides the lineage: 3D supervoxels, and no superpixel job
    counts = dry_run(tmp_path, config={**base, "train": {**demo["train"], "pseudo_labels": "supervoxels3d"}})
    assert counts["supervoxels"] == 10 and "superpixels" not in counts and counts["train"] == 1


def test_one_fold_can_be_rerun_by_asking_for_its_file(tmp_path, dry_run):
    counts = dry_run(tmp_path, "results/demo/ssl_alpnet/setting1/seed1234/fold0/metrics.json")
    assert counts["train"] == 1
    assert counts["evaluate"] == 1
    assert "report" not in counts and "all" not in counts


def test_mask_transfer_has_no_training_job(tmp_path, snakemake):
    result = snakemake(
        tmp_path, "--dry-run", "results/demo/mask_transfer/setting1/seed1234/fold0/model.pt"
    )
    assert result.returncode != 0
    assert "No rule to produce" in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('settings=["3"]', "config: `settings[0]`: got '3'; expected one of '1', '2', '2all'"),
        ("folds=[3]", "folds [3] do not exist with n_folds=3"),
        # the schema takes any name; the registry is the one list of datasets
        ("dataset={name: nowhere}", ("config: dataset.name 'nowhere' is not a registered dataset; known: "
                                     "phantom, chaos_mr, abdomenct1k, synapse_ct, cmr_bssfp, nifti_folder")),
    ],
)
def test_invalid_config_is_rejected_with_a_readable_message(tmp_path, override, message, snakemake):
    result = snakemake(tmp_path, "--dry-run", "--config", override)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output, output
    assert "Traceback" not in output
    # Snakemake's "WorkflowError in file ..." line, the message, its location lines; no
    # schema dump (tests/test_config_errors.py: schema errors take at most 3 lines)
    assert len([line for line in output.splitlines() if line.strip()]) <= 4, output


@pytest.mark.parametrize(("n_cases", "n_folds", "message"), [
    (3, 5, "3 cases cannot give 5 folds: 5 folds need a test case each"),
    (3, 2, "3 cases cannot give 2 folds: the largest test block plus the support scan leave no training case "
           "(each fold tests one block, takes the first case of the next block as support and trains on the "
           "rest); n_folds 3 works with these 3 cases; n_folds 2 needs at least 4 cases"),
    (2, 2, "no n_folds works with 2 case(s): at least 3 are needed"),
])
def test_too_few_cases_for_the_folds_stop_before_any_job(tmp_path, n_cases, n_folds, message, snakemake):
    """The one fold-feasibility check runs on the config, and says what would work."""
    cfg = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    cfg["dataset"] = {"name": "phantom", "n_cases": n_cases}
    cfg["n_folds"] = n_folds
    cfg.pop("folds", None)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    result = snakemake(tmp_path, "--dry-run", config=tmp_path / "cfg.yaml")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and message in output, output
    assert "Traceback" not in output and not (tmp_path / "results").exists()


def test_lint_is_clean(tmp_path, snakemake):
    result = snakemake(tmp_path, "--lint")
    output = result.stdout + result.stderr
    # --lint exits 1 as soon as it reports anything.
    assert result.returncode == 0, output
    assert "Congratulations" in output


# --- schema defaults, in-process (no Snakemake run needed) --------------------------


def validated(cfg: dict) -> dict:
    from snakemake.utils import validate

    validate(cfg, str(SCHEMA))
    return cfg


def test_schema_fills_paper_defaults_into_a_minimal_config():
    cfg = validated({"experiment": "paper", "dataset": {"name": "phantom"}})
    assert cfg["seed"] == 1234
    assert cfg["dataset"]["n_cases"] == 10
    assert "folds" not in cfg  # check_config (common.smk) fills every fold of n_folds
    assert cfg["model"] == {
        "backbone": "deeplabv3_resnet101",
        "feature_dim": 256,
        "pretrained": None,
    }
    train = cfg["train"]
    assert (train["steps"], train["lr"], train["momentum"]) == (100000, 0.001, 0.9)
    assert (train["weight_decay"], train["lr_step"], train["lr_gamma"]) == (
        0.0005,
        1000,
        0.95,
    )
    assert (train["bg_weight"], train["fg_weight"], train["align_weight"]) == (
        0.05,
        1.0,
        1.0,
    )
    assert train["augment"]["zoom"] == [0.9, 1.2]  # nested two levels down
    assert cfg["method_params"]["ssl_alpnet"]["threshold"] == 0.95
    assert cfg["method_params"]["panet"]["scale"] == 20.0
    assert cfg["evaluate"] == {"protocols": ["oracle", "full"], "n_parts": 3, "nsd_tolerance_mm": 2.0, "supports": 1}
    assert cfg["method_params"]["ssl_alpnet"]["empty_bg"] == "global"
    assert train["superpixel_sampling"] == "uniform"


def test_demo_config_overrides_only_what_it_lists():
    with open(DEMO_CONFIG) as f:
        cfg = validated(yaml.safe_load(f))
    assert cfg["model"]["backbone"] == "small_cnn"
    assert cfg["preprocess"]["image_size"] == 128
    assert (
        cfg["train"]["checkpoint_every"] < cfg["train"]["steps"]
    )  # resuming is exercised
    # keys the demo does not list keep the paper values
    assert cfg["train"]["lr"] == 0.001
    assert cfg["preprocess"]["ct_window"] == [-125, 275]
    assert cfg["method_params"]["ssl_alpnet"]["train_window"] == 4


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"dataset": {"name": "phantom"}}, "'experiment' is a required property"),
        (
            {"experiment": "x", "dataset": {"name": "phantom"}, "train": {"stepz": 5}},
            "'stepz' was unexpected",
        ),
        (
            {"experiment": "x", "dataset": {"name": "phantom"}, "methods": ["un-et"]},
            "does not match",
        ),
    ],
)
def test_schema_rejects_bad_configs(cfg, message):
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError) as error:
        validated(cfg)
    assert message in str(error.value)


def test_schema_settings_are_fsmis_settings():
    """fsmis.settings.SETTINGS is the one list of settings: the schema's enum (which
    gives the readable error above) and its per-setting keys must say the same."""
    from fsmis.settings import SETTINGS

    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))["properties"]
    enum = schema["settings"]["items"]["enum"]
    assert [s for s in enum if isinstance(s, str)] == list(SETTINGS)
    # integers are accepted where YAML reads a setting as a number
    assert [str(s) for s in enum if isinstance(s, int)] == [s for s in SETTINGS if s.isdigit()]
    keys = schema["method_params_by_setting"]["patternProperties"]
    assert list(keys) == [f"^({'|'.join(SETTINGS)})$"]


# --- profiles and environments ------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "gpu", "slurm", "slurm-cpu"])
def test_profile_keys_are_snakemake_options(name):
    from snakemake.cli import get_argument_parser

    with open(REPO / "workflow" / "profiles" / name / "profile.yaml") as f:
        profile = yaml.safe_load(f)
    options = {
        option.lstrip("-")
        for action in get_argument_parser()._actions
        for option in action.option_strings
    }
    assert set(profile) <= options


def test_gpu_limits_only_where_asked():
    profiles = REPO / "workflow" / "profiles"
    default = yaml.safe_load((profiles / "default" / "profile.yaml").read_text(encoding="utf-8"))
    gpu = yaml.safe_load((profiles / "gpu" / "profile.yaml").read_text(encoding="utf-8"))
    slurm = yaml.safe_load((profiles / "slurm" / "profile.yaml").read_text(encoding="utf-8"))
    assert "resources" not in default  # CPU demo: training jobs may run side by side
    assert "resources" not in gpu  # set from the visible GPUs by common.smk (fsmis.devices)
    assert slurm["executor"] == "slurm"
    assert slurm["set-resources"]["train"]["gpu"] == 1
    assert "gres" not in str(slurm.get("default-resources", {}))


def test_conda_env_pins_match_requirements():
    with open(REPO / "envs" / "fsmis.yaml") as f:
        env = yaml.safe_load(f)
    assert "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    requirements = [
        line.strip()
        for line in (REPO / "envs" / "requirements.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert sorted(pip) == sorted(requirements)


def test_unknown_method_is_refused_with_the_known_ones(tmp_path, snakemake):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"experiment": "demo", "methods": ["unet"]}))
    result = snakemake(tmp_path, "--dry-run", "--cores", "1", "--configfile", str(DEMO_CONFIG), str(cfg))
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "['unet'] are neither registered" in out and "variants" in out


def test_variants_become_methods_of_their_own(tmp_path, dry_run):
    cfg = tmp_path / "ablation.yaml"
    cfg.write_text(yaml.safe_dump({
        "experiment": "demo", "methods": ["panet", "panet_cold"], "baselines": [], "folds": [0],
        "variants": {"panet_cold": {"method": "panet", "params": {"scale": 5.0}}},
    }))
    counts = dry_run(tmp_path, "--configfile", str(DEMO_CONFIG), str(cfg))
    assert counts["train"] == 2 and counts["evaluate"] == 2


def test_demo_ablation_preset_runs_each_part_off(tmp_path, dry_run):
    preset = REPO / "workflow" / "presets" / "demo-ablation.yaml"
    counts = dry_run(tmp_path, "--configfile", str(DEMO_CONFIG), str(preset))
    # 4 DSPNet rows (full, no RAN, no FSPA, no BCMA) and 5 IPLSL rows (full and each
    # of its 4 components off) x 5 folds, no baselines
    assert counts["train"] == 45 and counts["evaluate"] == 45 and counts["report"] == 1


def test_demo_zoo_preset_runs_both_lineages(tmp_path, dry_run):
    preset = REPO / "workflow" / "presets" / "demo-zoo.yaml"
    counts = dry_run(tmp_path, "--configfile", str(DEMO_CONFIG), str(preset))
    # 9 methods + untrained x the demo's 3 folds; the ADNet lineage needs the supervoxels,
    # the SSL-ALPNet lineage the superpixels
    assert counts["train"] == 10 * 3 and counts["evaluate"] == 11 * 3
    assert counts["supervoxels"] == counts["superpixels"] == 10
