"""Command lines: train/train_router.py's recipes and options are checked before anything runs, and every
script's --help shows its defaults."""

import argparse
import json
import runpy
from dataclasses import fields
from pathlib import Path

import pytest

from harmonica.training.router_training import RouterTrainingConfig

REPO = Path(__file__).resolve().parent.parent
TRAIN_ROUTER = REPO / "train" / "train_router.py"


@pytest.fixture(scope="module")
def train_router():
    return runpy.run_path(str(TRAIN_ROUTER))


@pytest.fixture
def no_pipeline_loading(monkeypatch):
    """A refused run must stop before the pipeline is loaded: loading it fails the test."""
    import diffusers

    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline was loaded although the settings are refused")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", refuse)


def write_recipe(tmp_path, text):
    path = tmp_path / "recipe.json"
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    return path


BAD_RECIPES = {
    "unknown key": ({"target_usge": 0.9}, ["'target_usge'", "did you mean 'target_usage'"]),
    "unknown key 2": ({"trajectorys": 3}, ["'trajectorys'", "did you mean 'trajectories'"]),
    "string for int": ({"trajectories": "4"}, ["trajectories must be an integer", '"4"']),
    "float for int": ({"batch_size": 1.5}, ["batch_size must be an integer", "1.5"]),
    "bool for int": ({"seed": True}, ["seed must be an integer"]),
    "null beta": ({"beta": None}, ["beta must be a number", "null"]),
    "string for float": ({"lr": "1e-2"}, ["lr must be a number"]),
    "bad dtype": ({"torch_dtype": "float8"}, ["torch_dtype must be one of"]),
    "target out of range": ({"target_usage": 1.5}, ["target_usage must be in [0, 1)"]),
    "negative lr": ({"lr": -0.1}, ["lr must be a finite number > 0"]),
    "zero batch": ({"batch_size": 0}, ["batch_size must be >= 1"]),
    "threshold": ({"threshold": 1.0}, ["threshold must be a number strictly between 0 and 1"]),
    "objective": ({"objective": "fast"}, ["objective must be one of"]),
    "init": ({"init": "static:0"}, ["static:N"]),
    "scheduler": ({"scheduler": "NoSuchScheduler"}, ["scheduler must name a diffusers scheduler class"]),
    "nested recipe": ({"recipe": "other.json"}, ["unknown key 'recipe'"]),
    "malformed JSON": ('{"num_steps": 20,\n  "trajectories": 4\n  "lr": 0.1}', ["not valid JSON", "line 3, column 3"]),
    "duplicate key": ('{"lr": 0.1, "lr": 0.2}', ["'lr' is given twice"]),
    "not an object": ("[1, 2]", ["must hold one JSON object"]),
}


@pytest.mark.parametrize("case", list(BAD_RECIPES))
def test_bad_recipe_is_refused_before_anything_happens(case, train_router, tmp_path, capsys, no_pipeline_loading):
    content, expected = BAD_RECIPES[case]
    run_dir = tmp_path / "run"
    if isinstance(content, dict):  # otherwise valid: a pipeline and an output folder
        content = {"pipeline": "pipelines/shapes-dit", "output_dir": str(run_dir), **content}
    recipe = write_recipe(tmp_path, content)
    with pytest.raises(SystemExit) as exit_info:
        train_router["main"](["--recipe", str(recipe), "--output_dir", str(run_dir)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(recipe) in err, err
    for text in expected:
        assert text in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.json"]  # no run folder, no run_config.json


def test_missing_recipe_is_named(train_router, tmp_path, capsys, no_pipeline_loading):
    with pytest.raises(SystemExit):
        train_router["main"](["--recipe", str(tmp_path / "nope.json")])
    assert f"recipe {tmp_path / 'nope.json'}: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    (["--batch_size", "1.5"], "invalid int value: '1.5'"),
    (["--trajectorys", "3"], "unrecognized arguments: --trajectorys"),
    (["--target_usage", "2"], "target_usage must be in [0, 1)"),
    (["--lambda_floor", "-1"], "lambda_floor must be in [0, 1]"),
    (["--objective", "fast"], "invalid choice: 'fast'"),
    (["--init_router", "no/such-router"], "--init_router: "),
    (["--init_router", "pipelines/shapes-dit/router", "--step_counts", "10", "20", "--objective", "sdt"],
     "init_router fine-tunes a step-indexed router"),
])
def test_bad_option_is_refused(argv, expected, train_router, tmp_path, capsys, no_pipeline_loading):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_router["main"](["--pipeline", "pipelines/shapes-dit", "--output_dir", str(run_dir), *argv])
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err
    assert not run_dir.exists()


def test_missing_prompts_file_is_refused(train_router, tmp_path, capsys, no_pipeline_loading):
    with pytest.raises(SystemExit):
        train_router["main"](["--pipeline", "x", "--prompts", str(tmp_path / "prompts.txt"),
                              "--output_dir", str(tmp_path / "run")])
    assert f"cannot read the prompts in {tmp_path / 'prompts.txt'}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_shapes_prompts_are_the_flux_models_training_captions(train_router):
    """--prompts shapes: the embedded Flux model's own training captions (seed TRAIN_SEED), each once."""
    from harmonica_bench.data import TRAIN_SEED, parse_caption, render_captioned_shape

    _, config = train_router["parse_settings"](["--pipeline", "x", "--prompts", "shapes"])
    assert len(config.prompts) == len(set(config.prompts)) > 500
    assert {render_captioned_shape(i, TRAIN_SEED)["caption"] for i in range(20)} <= set(config.prompts)
    for caption in config.prompts:
        parse_caption(caption)  # raises on anything but a shapes caption

def test_options_override_the_recipe(train_router, tmp_path):
    recipe = write_recipe(tmp_path, {"pipeline": "some/pipeline", "trajectories": 3, "lr": 0.5, "target_usage": 0.4,
                                     "cpu": True, "torch_dtype": "float16"})
    options, config = train_router["parse_settings"](["--recipe", str(recipe), "--trajectories", "5",
                                                      "--torch_dtype", "bfloat16"])
    assert isinstance(config, RouterTrainingConfig)
    assert (config.trajectories, config.lr, config.target_usage) == (5, 0.5, 0.4)
    assert (options.pipeline, options.cpu, options.torch_dtype) == ("some/pipeline", True, "bfloat16")
    assert config.batch_size == RouterTrainingConfig().batch_size  # neither: the default


@pytest.mark.parametrize("recipe", sorted((REPO / "pipelines" / "recipes").glob("*.json")), ids=lambda p: p.name)
def test_shipped_recipes_are_accepted(recipe, train_router, monkeypatch):
    monkeypatch.chdir(REPO.parent)  # recipes name their pipeline folders and prompt files relative to themselves
    raw = json.loads(recipe.read_text())
    options, config = train_router["parse_settings"](["--recipe", str(recipe)])
    local = (recipe.parent / raw["pipeline"]).is_dir()
    assert raw["pipeline"].startswith("../") == local  # a shipped pipeline, else a hub id
    assert (Path(options.pipeline).resolve() == (recipe.parent / raw["pipeline"]).resolve() if local
            else options.pipeline == raw["pipeline"])
    assert config.num_steps == raw["num_steps"]
    assert config.output_dir == raw["output_dir"]
    assert bool(config.prompts) == ("prompts_file" in raw)


def test_packaged_trainer_runs_a_shipped_recipe_by_name_from_anywhere(tmp_path):
    """python -m harmonica.train --recipe shapes-dit from another working directory: the recipe is found by name,
    its pipeline (../shapes-dit) beside it; tiny overrides."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "harmonica.train", "--recipe", "shapes-dit", "--cpu", "--num_steps", "3",
           "--trajectories", "1", "--batch_size", "1", "--lambda_samples", "1", "--output_dir", "run"]
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "router saved to run/router" in result.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["iterations"] == 2 and (tmp_path / "run" / "router").is_dir()


def test_recipe_names_and_relative_paths(tmp_path, monkeypatch):
    from harmonica.training import cli

    shipped = cli.shipped_recipes()
    assert shipped == REPO / "pipelines" / "recipes"
    assert cli.find_recipe("shapes-dit-2x") == cli.find_recipe("shapes-dit-2x.json") == shipped / "shapes-dit-2x.json"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shapes-dit-2x.json").write_text("{}")
    assert cli.find_recipe("shapes-dit-2x.json") == Path("shapes-dit-2x.json")  # a file here comes first
    (tmp_path / "recipes").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "recipes" / "prompts.txt").write_text("a red square\n")
    recipe = write_recipe(tmp_path / "recipes", {"pipeline": "../model", "prompts_file": "prompts.txt"})
    options, config = cli.parse_settings(["--recipe", str(recipe)])
    assert Path(options.pipeline).resolve() == tmp_path / "model" and config.prompts == ["a red square"]
    options, _ = cli.parse_settings(["--recipe", str(recipe), "--pipeline", "model"])  # the command line: here
    assert options.pipeline == "model"


@pytest.mark.parametrize("argv, expected", [
    (["--pipeline", "/nowhere/pipeline"], "error: pipeline /nowhere/pipeline: no such folder (nor a hub id, org/name)"),
    (["--pipeline", "../pipeline"], "error: pipeline ../pipeline: no such folder"),
    (["--recipe", "no-such-recipe"],
     "error: recipe no-such-recipe: no such file (shipped recipes: cogvideox-2b, dit-xl-2-256, "),
])
def test_missing_pipeline_or_recipe_is_one_line(argv, expected, tmp_path, monkeypatch, capsys, no_pipeline_loading):
    from harmonica.training import cli

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--output_dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert expected in lines[-1], lines[-1]  # the last line: "<prog>: error: ..."
    assert not (tmp_path / "run").exists()


def test_every_router_training_setting_has_help(train_router):
    parser = train_router["build_parser"]()
    by_dest = {a.dest: a for a in parser._actions}
    settings = [f.name for f in fields(RouterTrainingConfig) if f.name != "prompts"]
    script = ["recipe", "pipeline", "torch_dtype", "prompts_file", "cpu"]
    for name in settings + script:
        assert by_dest[name].help and len(by_dest[name].help) > 10, name
    text = " ".join(parser.format_help().split())
    assert "--trajectories TRAJECTORIES sampling trajectories in all" in text
    assert f"(default: {RouterTrainingConfig().trajectories})" in text


def test_prompts_the_embedded_flux_model_cannot_draw_are_named(train_router, tmp_path):
    import warnings

    from harmonica_bench.embedded import FLUX_PIPELINE

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a small red star on a blue background\na white ring on a black background\n")
    with pytest.warns(UserWarning, match="1 of 2 captions.*red on blue was never trained.*--vocabulary"):
        train_router["parse_settings"](["--pipeline", str(FLUX_PIPELINE), "--prompts", str(prompts)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its own captions, and any prompts for another pipeline, pass quietly
        train_router["parse_settings"](["--pipeline", str(FLUX_PIPELINE), "--prompts", "shapes"])
        train_router["parse_settings"](["--pipeline", "some/other-flux", "--prompts", str(prompts)])


def test_init_help_lists_every_form_parse_init_accepts(train_router):
    from harmonica.router import INIT_FORMS, RouterError, parse_init

    for form in INIT_FORMS:
        parse_init(form.replace("N", "3").replace("W", "2"))  # each form is accepted...
    for other in ("static", "static:0", "static:3:2:1", "static:x", "taylor", "random:3"):
        with pytest.raises(RouterError):  # ...and no other shape
            parse_init(other)
    text = " ".join(train_router["build_parser"]().format_help().split())
    start = text.index("--init INIT starting logits")
    init_help = text[start:text.index("--lambda_variant", start)]
    for form in INIT_FORMS:
        assert form in init_help, form


def documented_launches():
    """Every `accelerate launch` command in the scripts' docstrings and the TRAINING.md files: (where, environment
    prefix, launch options, script)."""
    import ast
    import re

    for path in sorted([*REPO.glob("train/*.py"), *REPO.glob("eval/*.py"), *REPO.glob("pipelines/**/TRAINING.md")]):
        text = path.read_text()
        if path.suffix == ".py":
            text = ast.get_docstring(ast.parse(text)) or ""
        flat = " ".join(text.replace("\\\n", " ").split())
        for m in re.finditer(r"((?:[A-Z_]+=\S+ )*)accelerate launch (.*?)(\S+\.py)\b", flat):
            env = dict(pair.split("=", 1) for pair in m.group(1).split())
            yield pytest.param(env, m.group(2).split(), m.group(3), id=f"{path.relative_to(REPO)}:{m.start()}")


@pytest.mark.parametrize("env, options, script", list(documented_launches()))
def test_documented_accelerate_launches_leave_accelerate_nothing_to_default(env, options, script, monkeypatch,
                                                                             tmp_path):
    """accelerate launch warns about every value it had to default ("The following values were not passed to
    `accelerate launch` ..."); the documented commands pass them all, checked with accelerate's own launcher
    logic, without a config file. Its --cpu flag starts one process whatever --num_processes says."""
    import logging

    from accelerate.commands import launch

    monkeypatch.setattr(launch, "default_config_file", str(tmp_path / "no-accelerate-config.yaml"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = launch.launch_command_parser().parse_args([*options, script, "--help"])
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    launcher_log = logging.getLogger(launch.__name__)
    launcher_log.addHandler(handler)
    try:
        args, _, _ = launch._validate_launch_command(args)
    finally:
        launcher_log.removeHandler(handler)
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []
    assert not (args.cpu and args.num_processes > 1), "accelerate launch --cpu starts a single process"


SCRIPTS = sorted(p.relative_to(REPO).as_posix() for p in [*REPO.glob("train/*.py"), *REPO.glob("eval/*.py")])
SCRIPTS += ["harmonica_bench/demo.py", "harmonica/train.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_every_default(script, monkeypatch, capsys):
    """Every option that takes a value says its default in --help (argparse's value, or the help text's own
    words where the default depends on something, e.g. 'default: cuda when available')."""
    parsers = []
    original = argparse.ArgumentParser.parse_known_args

    def capture(self, *args, **kwargs):
        parsers.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    monkeypatch.setattr("sys.argv", [script, "--help"])
    monkeypatch.setenv("COLUMNS", "10000")  # one line per option
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / script), run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    parser = next(p for p in parsers if any(a.option_strings == ["-h", "--help"] for a in p._actions))
    options = [a for a in parser._actions if a.option_strings and a.nargs != 0 and a.default != argparse.SUPPRESS]
    assert options
    blocks = {}  # first option string -> its lines in --help
    for line in out.splitlines():
        if line.strip().startswith("-"):
            key = line.strip().split()[0].rstrip(",")
            blocks[key] = line
        elif line.startswith("    ") and blocks:
            blocks[key] += " " + line.strip()
    for action in options:
        text = blocks[action.option_strings[0]]
        assert "default" in text.lower(), f"{script}: {text.strip()}"


def test_flux_recipes_train_on_the_embedded_models_captions_from_the_packaged_trainer(tmp_path, monkeypatch):
    """The shipped Flux recipes name a prompts file beside the embedded model, which holds exactly the captions
    it was trained on (the lab's 'shapes' set), so ``python -m harmonica.train --recipe shapes-flux-2x`` works
    from anywhere without the lab."""
    from harmonica.training import cli
    from harmonica_bench.shapes import SHAPES

    monkeypatch.chdir(tmp_path)
    for name in ("shapes-flux-1.5x", "shapes-flux-2x", "shapes-flux-2.5x"):
        options, config = cli.parse_settings(["--recipe", name])
        assert config.prompts == SHAPES.train_captions(), name
