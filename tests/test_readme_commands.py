"""Every command README.md shows is run here, and what the README says of it is checked.

The commands are read from README.md: every line of a fenced ```bash block (lines
ending in a backslash joined, comments and blank lines dropped) and every inline code
span that is a whole command (it starts with `.venv/bin/`, `snakemake ` or
`python -m `; option fragments such as `--forcerun train` and the program name in
"an `mlflow server`" are not commands). `CHECKS` maps each command, spelled as in the
README, to the function that checks it; a command added to the README without a check
here, or a check whose command left the README, fails `test_every_readme_command_has_a_check`
with the command named.

The README's commands run in a repository checkout (`.venv/bin/snakemake` with the
Snakefile and `config.yaml` beside it). Here they run with this interpreter on this
repository's Snakefile in a temporary working directory (tests/conftest.py
`run_workflow`), whose `config.yaml` stands for the checkout's: the demo's own file
for dry-runs, or for the commands that need finished results a tiny copy of the demo
(experiment `demo`, 4 phantom cases at 64x64 in 3 folds of which fold 2, the fold the
README's paths name, runs; a few training steps; SSL-ALPNet only). That tiny demo is
run once (`finished`), then the README's rerun recipes on it in the order a user would
take them; the checks read what each step did.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import fake_datasets
import pytest
import yaml
from conftest import DEMO_CONFIG, REPO, job_counts, run_workflow, tiny_config

pytestmark = pytest.mark.slow

README = REPO / "README.md"
PRESETS = REPO / "workflow" / "presets"

# --- the commands, as the README spells them ----------------------------------------

SETUP = ("python3.11 -m venv .venv && .venv/bin/pip install -r envs/requirements.txt"
         " && .venv/bin/pip install -e . --no-deps")
DEMO_RUN = ".venv/bin/snakemake --cores 8 all"
TEST_RUN = ".venv/bin/python -m pytest -q"
FOLD = "results/demo/ssl_alpnet/setting1/seed1234/fold2"
ASK = f".venv/bin/snakemake --cores 2 {FOLD}/metrics.json"
RETRAIN = f".venv/bin/snakemake --cores 2 all --forcerun {FOLD}/all/model.pt"
REFRESH = ".venv/bin/snakemake --cores 1 report --forcerun report --allowed-rules report"
SETTING2 = (".venv/bin/snakemake --cores 2 results/demo/ssl_alpnet/setting2/seed1234/fold2/metrics.json"
            " --config 'settings=[1,2]'")
ONE_CASE = ".venv/bin/snakemake --cores 2 all --forcerun results/data/phantom/canonical/phantom_003_image.nii.gz"
MLFLOW_UI = ".venv/bin/mlflow ui --backend-store-uri sqlite:///results/mlflow/mlflow.db"
COMPARE = ".venv/bin/python -m fsmis.compare --experiment demo --metric mean_dice --setting 1 --protocol oracle"


def preset_command(name: str) -> str:
    return f".venv/bin/snakemake --cores 8 all --configfile workflow/presets/{name}.yaml --replace-workflow-config"


# --- reading the README ---------------------------------------------------------------

def fenced_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        joined = re.sub(r"\\\n", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                commands.append(" ".join(line.split()))
    return commands


def inline_commands(text: str) -> list[str]:
    """The inline code spans outside the fenced blocks that are whole commands."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    spans = (" ".join(span.split()) for _, span in re.findall(r"(`+)(.+?)\1", prose, flags=re.S))
    return [s for s in spans if re.match(r"(\.venv/bin/\S+|snakemake|python -m) ", s)]


def readme_commands() -> set[str]:
    text = README.read_text(encoding="utf-8")
    return set(fenced_commands(text)) | set(inline_commands(text))


def readme_paragraph_after(span: str) -> str:
    """The README's text from the inline span `span` to the next blank line."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"`{span}`")
    end = text.find("\n\n", start)
    return " ".join(text[start:end if end > 0 else None].split())


# --- running the commands -------------------------------------------------------------

def checkout(path: Path, config: Path | dict = DEMO_CONFIG) -> Path:
    """A working directory standing for a repository checkout: `config.yaml` (the
    demo's, or ``config``) where the Snakefile's `configfile:` directive reads it."""
    path.mkdir(parents=True, exist_ok=True)
    text = config.read_text(encoding="utf-8") if isinstance(config, Path) else yaml.safe_dump(config)
    (path / "config.yaml").write_text(text, encoding="utf-8")
    return path


def snakemake(workdir: Path, command: str, *extra: str, timeout: int = 600):
    """A README `snakemake` command in ``workdir`` (see `checkout`), ``extra`` appended;
    returns (finished process, its output, seconds). Its `--configfile` is a repository
    file (presets) or one in ``workdir``; without one the checkout's config.yaml is used,
    as the `configfile:` directive would."""
    args = shlex.split(command)
    assert Path(args[0]).name == "snakemake", command
    args = args[1:]
    config = workdir / "config.yaml"
    if "--configfile" in args:
        at = args.index("--configfile")
        name = args.pop(at + 1)
        del args[at]
        config = REPO / name if (REPO / name).is_file() else workdir / name
    start = time.perf_counter()
    result = run_workflow(workdir, *args, *extra, config=config, timeout=timeout)
    return result, result.stdout + result.stderr, time.perf_counter() - start


def python_module(command: str, *extra: str, cwd: Path, timeout: int = 120):
    """A README `python -m ...` command with this interpreter in ``cwd``."""
    args = shlex.split(command)
    assert Path(args[0]).name == "python" and args[1] == "-m", command
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, *args[1:], *extra], cwd=cwd, capture_output=True, text=True,
                          encoding="utf-8", errors="replace", env=env, timeout=timeout)


def stamp(workdir: Path, paths) -> dict[str, int]:
    """Modification times (ns) of those of ``paths`` (under ``workdir``) that exist."""
    return {p: (workdir / p).stat().st_mtime_ns for p in paths if (workdir / p).exists()}


# --- the tiny demo, run once, then the rerun recipes on it ---------------------------

TINY_DEMO = tiny_config(experiment="demo", folds=[2])
REPORT_FILE = "results/demo/report/dice_per_fold.csv"
MODEL = f"{FOLD}/all/model.pt"
METRICS = f"{FOLD}/metrics.json"
PREPROCESSED = "results/data/phantom/preprocessed/phantom_003_image.nii.gz"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny demo through README command 1's `snakemake` part, then in turn: one
    fold's metrics asked for again (after deleting them), the tables refreshed, that
    fold retrained, and command 1 once more. {step: (process, output, seconds,
    {path: mtime before}, {path: mtime after})}; "dir": the working directory."""
    wd = checkout(tmp_path_factory.mktemp("readme"), TINY_DEMO)
    steps = {"dir": wd}
    result, out, seconds = snakemake(wd, DEMO_RUN)
    assert result.returncode == 0, out[-6000:]
    steps["demo"] = (result, out, seconds, {}, {})
    watched = (REPORT_FILE, MODEL, METRICS, f"{FOLD}/all/train_log.tsv", PREPROCESSED)

    def step(name, command, before=None):
        if before:
            before()
        old = stamp(wd, watched)
        result, out, seconds = snakemake(wd, command)
        steps[name] = (result, out, seconds, old, stamp(wd, watched))

    step("ask", ASK, before=lambda: (wd / METRICS).unlink())
    step("refresh", REFRESH)
    step("retrain", RETRAIN)
    step("again", DEMO_RUN)
    return steps


def ran(steps: dict, name: str) -> dict[str, int]:
    """The jobs step ``name`` ran, {rule: n}, after checking that it succeeded."""
    result, out, *_ = steps[name]
    assert result.returncode == 0, out[-6000:]
    return job_counts(out)


# --- the checks -----------------------------------------------------------------------

CHECKS: dict[str, Callable[[str, pytest.FixtureRequest], None]] = {}


def check(*commands: str):
    def register(fn):
        for command in commands:
            CHECKS[command] = fn
        return fn

    return register


def ci_run_lines() -> list[str]:
    return [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]


def assert_ci_sets_up_as(setup: str) -> None:
    """Each `&&` part of the README's set-up is a command of .ci/run (the venv is
    created there only where it is missing)."""
    lines = ci_run_lines()
    for part in setup.split(" && "):
        assert part in lines, f".ci/run lacks the README's set-up step {part!r}"


@check(f"{SETUP} && {TEST_RUN}", TEST_RUN)
def check_the_test_command_is_what_ci_runs(command, request):
    """Not run (this is that suite): .ci/run performs the README's set-up and runs its
    test command, with pytest's own arguments passed through."""
    *setup, test = command.split(" && ")
    if setup:
        assert_ci_sets_up_as(" && ".join(setup))
    assert test == TEST_RUN
    assert f'{TEST_RUN} "$@"' in ci_run_lines()


@check(f"{SETUP} && {DEMO_RUN}")
def check_the_demo_runs_every_stage(command, request):
    """The set-up as in .ci/run (pip is not run here); the `snakemake` part is the run
    of the `finished` fixture, on the tiny demo: every stage, no download (no network);
    the same command again has nothing to do, within seconds."""
    *setup, run = command.split(" && ")
    assert_ci_sets_up_as(" && ".join(setup))
    assert run == DEMO_RUN
    steps = request.getfixturevalue("finished")
    counts = ran(steps, "demo")
    assert counts == {"generate_phantom": 1, "canonical": 4, "case_table": 1, "preprocess": 4, "classmap": 1,
                      "splits": 1, "superpixels": 4, "train": 1, "evaluate": 1, "report": 1, "all": 1}
    assert (steps["dir"] / REPORT_FILE).stat().st_size > 0
    result, out, seconds, *_ = steps["again"]
    assert result.returncode == 0 and "Nothing to be done" in out and "Job stats" not in out, out[-4000:]
    assert seconds < 30


HAND_PLACED = {
    "abd-ct": lambda wd: fake_datasets.synapse_folder(wd / "resources" / "synapse_ct",
                                                      numbers=(*range(1, 11), *range(21, 41))),
    "card-mri": lambda wd: fake_datasets.cmr_folder(wd / "resources" / "cmr_bssfp", numbers=range(1, 36)),
}


@check(*(preset_command(name) for name in ("abd-mri", "abdomenct1k", "abd-ct", "card-mri")))
def check_a_paper_preset_plans_the_whole_chain(command, request):
    """Dry-run (`-n`, as the README suggests): the whole job graph the README lists, from
    the download (Zenodo presets) or the files placed by hand (tiny fake files with the
    releases' names under dataset.root) to the report, the COCO weights fetched, one
    conversion job per case, 5 folds, one model per label group in setting 2."""
    name = re.search(r"presets/(\S+)\.yaml", command)[1]
    preset = yaml.safe_load((PRESETS / f"{name}.yaml").read_text(encoding="utf-8"))
    wd = checkout(request.getfixturevalue("tmp_path"))
    if name in HAND_PLACED:
        HAND_PLACED[name](wd)
    result, out, _ = snakemake(wd, command, "-n")
    assert result.returncode == 0, out[-6000:]
    counts = job_counts(out)
    by_hand = name in HAND_PLACED
    stages = {"canonical", "preprocess", "superpixels", "splits", "train", "evaluate", "report"}
    assert stages | ({"download", "unpack"} if not by_hand else set()) <= set(counts), counts
    assert by_hand == ("download" not in counts)
    assert counts["fetch_weights"] == 1
    assert counts["canonical"] == counts["preprocess"] == counts["superpixels"]
    settings = [str(s) for s in preset["settings"]]
    rows = len(preset["methods"]) + len(preset["baselines"])
    models = len(preset["methods"]) + ("untrained" in preset["baselines"])
    groups = sum(2 if s == "2" else 1 for s in settings)  # two label groups in setting 2
    assert counts["evaluate"] == 5 * rows * len(settings)
    assert counts["train"] == 5 * models * groups


@check(ASK)
def check_asking_for_a_fold_evaluates_it_and_leaves_the_tables(command, request):
    """On the finished tiny demo with fold 2's metrics deleted: that evaluation alone,
    the model and the report untouched. Dry-run on an empty tree: its model is trained
    first (with the data stages), and no report is planned."""
    steps = request.getfixturevalue("finished")
    assert ran(steps, "ask") == {"evaluate": 1}
    _, _, _, before, after = steps["ask"]
    assert METRICS in after and METRICS not in before
    assert before[MODEL] == after[MODEL] and before[REPORT_FILE] == after[REPORT_FILE]
    empty = checkout(request.getfixturevalue("tmp_path"), TINY_DEMO)
    result, out, _ = snakemake(empty, command, "-n")
    assert result.returncode == 0, out[-6000:]
    counts = job_counts(out)
    assert counts["train"] == 1 and counts["evaluate"] == 1 and counts["preprocess"] == 4
    assert "report" not in counts and "all" not in counts


@check(RETRAIN)
def check_retraining_a_fold_rebuilds_the_report(command, request):
    """On the finished tiny demo: training and evaluation of that fold, the report and
    `all` (4 jobs); model, metrics and report rewritten, the data stages not; the tree
    is then consistent (command 1 again has nothing to do)."""
    steps = request.getfixturevalue("finished")
    assert ran(steps, "retrain") == {"train": 1, "evaluate": 1, "report": 1, "all": 1}
    _, _, _, before, after = steps["retrain"]
    for path in (MODEL, METRICS, REPORT_FILE):
        assert after[path] > before[path], path
    assert after[PREPROCESSED] == before[PREPROCESSED]
    assert "Nothing to be done" in steps["again"][1]


@check(REFRESH)
def check_refreshing_the_tables_runs_the_report_only(command, request):
    """On the finished tiny demo (after a fold's metrics were recomputed): the report
    job alone, within seconds (under 30 s here), report rewritten, model untouched.
    After a change of the training configuration (dry-run) still the report alone."""
    steps = request.getfixturevalue("finished")
    assert ran(steps, "refresh") == {"report": 1}
    _, _, seconds, before, after = steps["refresh"]
    assert after[REPORT_FILE] > before[REPORT_FILE]
    assert after[MODEL] == before[MODEL] and after[METRICS] == before[METRICS]
    assert seconds < 30, f"the report refresh took {seconds:.0f} s"
    wd = steps["dir"]
    changed = wd / "more_steps.yaml"
    changed.write_text(yaml.safe_dump({"train": {"steps": TINY_DEMO["train"]["steps"] + 1}}), encoding="utf-8")
    result, out, _ = snakemake(wd, command, "-n", "--configfile", str(wd / "config.yaml"), str(changed))
    assert result.returncode == 0, out[-6000:]
    assert job_counts(out) == {"report": 1}


# The refresh must never train: with the `inventory` checkpoint defined only for the
# dataset that needs it (AbdomenCT-1K's full release), --allowed-rules stops a missing
# metrics.json instead of computing it (in a workflow with a checkpoint, Snakemake
# applies the option to reruns only).
def test_refreshing_the_tables_without_results_stops_instead_of_training(tmp_path):
    wd = checkout(tmp_path, TINY_DEMO)
    result, out, _ = snakemake(wd, REFRESH, "-n")
    assert "rule train:" not in out and "Job stats" not in out, out[-4000:]
    assert result.returncode != 0 and "MissingInputException" in out, out[-4000:]


@check(SETTING2)
def check_the_setting_2_example_plans_one_model_per_label_group(command, request):
    """The demo's config has setting 1 only (the schema's default); with the command's
    `--config` the fold of setting 2 plans (dry-run, on the finished tiny demo) one
    training job per label group of the phantom and that fold's evaluation."""
    assert "settings" not in yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text(encoding="utf-8"))
    assert [str(s) for s in schema["properties"]["settings"]["default"]] == ["1"]
    steps = request.getfixturevalue("finished")
    result, out, _ = snakemake(steps["dir"], command, "-n")
    assert result.returncode == 0, out[-6000:]
    assert job_counts(out) == {"train": 2, "evaluate": 1}
    fold = "results/demo/ssl_alpnet/setting2/seed1234/fold2"
    for group in ("left_kidney+right_kidney", "liver+spleen"):
        assert f"output: {fold}/{group}/model.pt" in out, group


@check(ONE_CASE)
def check_one_case_is_redone_with_what_reads_it(command, request):
    """Dry-run on the finished tiny demo: phantom_003's conversion, preprocessing and
    superpixels (one job each), then the case table, class map, splits, every model
    (one in the tiny demo), its evaluation and the report; no new phantom."""
    steps = request.getfixturevalue("finished")
    result, out, _ = snakemake(steps["dir"], command, "-n")
    assert result.returncode == 0, out[-6000:]
    assert job_counts(out) == {"canonical": 1, "case_table": 1, "preprocess": 1, "classmap": 1, "splits": 1,
                               "superpixels": 1, "train": 1, "evaluate": 1, "report": 1, "all": 1}
    for path in ("results/data/phantom/canonical/phantom_003_image.nii.gz",
                 "results/data/phantom/preprocessed/phantom_003_image.nii.gz",
                 "results/data/phantom/superpixels/phantom_003.nii.gz"):
        assert re.search(rf"output: [^\n]*{re.escape(path)}", out), path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, body: dict | None = None, timeout: float = 30) -> dict:
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


@check(MLFLOW_UI)
def check_the_mlflow_ui_serves_the_runs(command, request):
    """Started as the README has it in the finished tiny demo's directory, on a free port
    (one worker, MLflow's job runner off, so it starts fast on a busy CPU); it answers
    HTTP, and the README's filter `tags.stage = 'evaluate'` finds the evaluate runs of
    experiment demo; then it is stopped."""
    steps = request.getfixturevalue("finished")
    port = free_port()
    args = shlex.split(command)
    mlflow = Path(sys.executable).with_name("mlflow")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    server = subprocess.Popen([str(mlflow), *args[1:], "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              cwd=steps["dir"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read().decode("utf-8", "replace")[-4000:]
            try:
                with urllib.request.urlopen(base + "/", timeout=5) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "mlflow ui did not answer within 120 s"
                time.sleep(0.5)
        query = urllib.parse.urlencode({"experiment_name": "demo"})
        experiment = http_json(f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]
        runs = http_json(f"{base}/api/2.0/mlflow/runs/search", {
            "experiment_ids": [experiment["experiment_id"]], "filter": "tags.stage = 'evaluate'"}).get("runs", [])
        # the first run, the fold asked for again and the retrained fold
        assert len(runs) == 3
        for run in runs:
            tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
            assert (tags["method"], tags["setting"], tags["fold"]) == ("ssl_alpnet", "1", "2")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


@check(".venv/bin/python -m fsmis.tracking store-spool results/mlflow/spool")
def check_storing_the_spool_by_hand_finds_nothing_waiting_after_a_run(command, request):
    """In the finished tiny demo every run was stored at the end: the command stores
    nothing, says so and exits 0 (1 would mean runs still wait)."""
    steps = request.getfixturevalue("finished")
    args = shlex.split(command)
    result = subprocess.run([sys.executable, *args[1:]], cwd=steps["dir"], capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@check(COMPARE)
def check_compare_prints_dice_in_percent(command, request):
    """In the finished tiny demo's directory: a table of methods x folds from the store,
    Dice in percent, the newest run of fold 2 equal to its metrics.json."""
    steps = request.getfixturevalue("finished")
    result = python_module(command, cwd=steps["dir"])
    assert result.returncode == 0, result.stderr[-4000:]
    header, *rows = result.stdout.splitlines()
    assert "Dice (%)" in header and "setting 1" in header and "oracle" in header
    (row,) = [line for line in rows if line.startswith("ssl_alpnet")]
    metrics = json.loads((steps["dir"] / METRICS).read_text(encoding="utf-8"))
    assert row.split()[1] == f"{100 * metrics['protocols']['oracle']['mean_dice']:.2f}"
    assert any(line.split()[:1] == ["fold2"] for line in rows)


@check("snakemake --report report.html")
def check_the_html_report_holds_the_report(command, request):
    """In the finished tiny demo's directory: one HTML page naming the report's tables
    and figures."""
    steps = request.getfixturevalue("finished")
    result, out, _ = snakemake(steps["dir"], command)
    assert result.returncode == 0, out[-4000:]
    html = (steps["dir"] / "report.html").read_text(encoding="utf-8", errors="replace")
    for name in ("dice_setting1_oracle.csv", "spread_setting1_oracle.csv", "dice_bars_setting1_oracle.png"):
        assert name in html, name


@check("python -m fsmis.models.schema --write")
def check_the_schema_writer_leaves_a_current_schema_alone(command, request):
    """On a copy of the schema (`--schema`: the test does not rewrite the repository's
    file): the generated parts are up to date, the file unchanged."""
    copy = request.getfixturevalue("tmp_path") / "config.schema.yaml"
    original = (REPO / "workflow" / "schemas" / "config.schema.yaml").read_bytes()
    copy.write_bytes(original)
    result = python_module(command, "--schema", str(copy), cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().endswith("up to date") and copy.read_bytes() == original


@check("python -m fsmis.data.adapters")
def check_the_dataset_list_names_every_dataset(command, request):
    """One line per registered dataset: the phantom and every dataset id of the README's
    table of paper datasets."""
    result = python_module(command, cwd=request.getfixturevalue("tmp_path"))
    assert result.returncode == 0, result.stderr[-4000:]
    names = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    text = README.read_text(encoding="utf-8")
    table = text[text.index("| dataset id | preset |"):]
    table = table[:table.index("\n\n")]
    listed = set(re.findall(r"^\| `(\w+)`", table, flags=re.M))
    assert {"chaos_mr", "abdomenct1k", "synapse_ct", "cmr_bssfp", "nifti_folder"} <= listed
    assert listed | {"phantom"} <= set(names) and len(names) == len(set(names))


@check("snakemake --cores 8 all")
def check_the_demo_plans_the_jobs_the_readme_counts(command, request):
    """Dry-run of the demo's own config.yaml: the number of jobs the README states after
    it, one conversion and one supervoxel job per case (ADNet's), 3 folds of 4 trained
    (SSL-ALPNet, DSPNet, ADNet, the untrained network) and 5 evaluated rows."""
    wd = checkout(request.getfixturevalue("tmp_path"))
    result, out, _ = snakemake(wd, command, "-n")
    assert result.returncode == 0, out[-6000:]
    counts = job_counts(out)
    claimed = re.search(r"(\d+) jobs", readme_paragraph_after(command))
    if claimed:
        assert sum(counts.values()) == int(claimed[1]), counts
    assert counts["canonical"] == counts["supervoxels"] == 10
    assert counts["train"] == 3 * 4 and counts["evaluate"] == 3 * 5


@check("snakemake --cores 8 all --configfile workflow/presets/demo-ablation.yaml")
def check_the_demo_ablation_trains_each_part_off(command, request):
    """Dry-run in a checkout (the preset merged on the demo's config.yaml: no paper
    backbone weights): 4 DSPNet and 5 IPLSL rows x 5 folds, into results/demo-ablation/."""
    wd = checkout(request.getfixturevalue("tmp_path"))
    result, out, _ = snakemake(wd, command, "-n")
    assert result.returncode == 0, out[-6000:]
    counts = job_counts(out)
    assert counts["train"] == counts["evaluate"] == 9 * 5 and "fetch_weights" not in counts
    assert "results/demo-ablation/dspnet_no_ran/setting1/seed1234/fold4/metrics.json" in out


@check("snakemake --cores 8 all --configfile workflow/presets/demo-variance.yaml")
def check_the_demo_variance_run_trains_three_seeds_and_evaluates_three_supports(command, request):
    """Dry-run in a checkout: the numbers the README states (75 training and 90
    evaluation jobs), each fold under seed1234, seed1235 and seed1236, into
    results/demo-variance/."""
    wd = checkout(request.getfixturevalue("tmp_path"))
    result, out, _ = snakemake(wd, command, "-n")
    assert result.returncode == 0, out[-6000:]
    counts = job_counts(out)
    paragraph = readme_paragraph_after(command)
    assert f"{counts['train']} training and {counts['evaluate']} evaluation jobs" in paragraph
    assert (counts["train"], counts["evaluate"]) == (75, 90)
    for seed in (1234, 1235, 1236):
        assert f"results/demo-variance/ssl_alpnet/setting1/seed{seed}/fold4/metrics.json" in out


@check("snakemake --cores 8 all --configfile workflow/presets/demo-zoo.yaml")
def check_the_demo_zoo_plans_every_method_of_both_lineages(command, request):
    """Dry-run in a checkout: the 109 jobs the README states, 9 methods + the untrained
    network trained and 11 rows evaluated per fold (3 folds), 3D supervoxels for the
    ADNet lineage and 2D superpixels for the other, into results/demo-zoo/."""
    wd = checkout(request.getfixturevalue("tmp_path"))
    result, out, _ = snakemake(wd, command, "-n")
    assert result.returncode == 0, out[-6000:]
    counts = job_counts(out)
    assert f"{sum(counts.values())} jobs" in readme_paragraph_after(command)
    assert (counts["train"], counts["evaluate"], counts["superpixels"], counts["supervoxels"]) == (30, 33, 10, 10)
    for method in ("qnet", "catnet", "rpt", "gmrd", "iplsl"):
        assert f"results/demo-zoo/{method}/setting1/seed1234/fold2/metrics.json" in out


@check("snakemake --configfile my.yaml --replace-workflow-config")
def check_another_experiment_starts_from_the_paper_defaults(command, request):
    """Dry-run with a minimal my.yaml (experiment and dataset) in a checkout whose
    config.yaml asks for one fold: the checkout's config is not merged, the schema's
    defaults apply (5 folds)."""
    wd = checkout(request.getfixturevalue("tmp_path"), {"experiment": "demo", "folds": [0]})
    (wd / "my.yaml").write_text(yaml.safe_dump({"experiment": "my", "dataset": {"name": "phantom"}}),
                                encoding="utf-8")
    result, out, _ = snakemake(wd, command, "-n")
    assert result.returncode == 0, out[-6000:]
    counts = job_counts(out)
    assert counts["evaluate"] == 6 * 5 and counts["report"] == 1
    assert "results/my/report/" in out and "results/demo/" not in out


# --- the README's commands and these checks, one to one -------------------------------

def test_every_readme_command_has_a_check():
    found = readme_commands()
    unchecked = sorted(found - set(CHECKS))
    gone = sorted(set(CHECKS) - found)
    assert not unchecked and not gone, (
        "README commands without a check in tests/test_readme_commands.py:\n  " + "\n  ".join(unchecked or ["-"])
        + "\nchecks whose command is no longer in README.md:\n  " + "\n  ".join(gone or ["-"]))


def command_id(command: str) -> str:
    """A test id: the command without `.venv/bin/`, the set-up before `&&` abbreviated."""
    *setup, last = command.split(" && ")
    return ("set-up && " if setup else "") + last.replace(".venv/bin/", "")


@pytest.mark.parametrize("command", sorted(CHECKS), ids=command_id)
def test_readme_command(command, request):
    CHECKS[command](command, request)
