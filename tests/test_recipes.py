"""Training recipes as files: `seq2edge train --config FILE.yaml`, and the shipped models' recipes."""

import json
import subprocess

import pytest
from conftest import REPO, SEQ2EDGE

from seq2edge.runtime.errors import Seq2EdgeError
from seq2edge.train.cli import train
from seq2edge.train.recipe import read_recipe

RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))


def test_a_recipe_sets_the_options_and_the_command_line_overrides_it(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("cell: gru\nattention: general\nbidirectional: true\nembed: 16\nhidden: 24\nepochs: 1\n"
                      "limit: 120\ndev-limit: 20\nseed: 5\nlr: 0.004\nthreads: 1\n")
    out = tmp_path / "run"
    subprocess.run([*SEQ2EDGE, "train", "--config", str(recipe), "--hidden", "32", "--out", str(out)], check=True,
                   capture_output=True)
    config = json.loads((out / "config.json").read_text())
    saved = json.loads((out / "train.json").read_text())["train_config"]
    assert (config["cell"], config["attention"], config["bidirectional"], config["embed"]) == ("gru", "general", True, 16)
    assert config["hidden"] == 32  # the command line wins over the recipe's 24
    assert (saved["seed"], saved["lr"], saved["epochs"], saved["train_limit"]) == (5, 0.004, 1, 120)


@pytest.mark.parametrize("text,message", [
    ("hiden: 64\n", "unknown option 'hiden'; did you mean 'hidden'?"),
    ("input_feed: true\n", "unknown option 'input_feed'; did you mean 'input-feed'?"),
    ("- hidden\n", "a recipe is a mapping of option names to values, not a list"),
    ("hidden: [1\n", "not a valid YAML recipe"),
])
def test_a_bad_recipe_is_one_line_naming_the_key_and_the_nearest_option(tmp_path, text, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    proc = subprocess.run([*SEQ2EDGE, "train", "--config", str(recipe), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and str(recipe) in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_recipe_value_is_checked_like_the_flag(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("cell: transformer\n")
    proc = subprocess.run([*SEQ2EDGE, "train", "--config", str(recipe), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "transformer" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_refuses_a_recipe_that_differs_from_the_saved_run(tiny_checkpoint, tmp_path):
    recipe = tmp_path / "other.yaml"
    recipe.write_text("hidden: 64\n")
    proc = subprocess.run([*SEQ2EDGE, "train", "--config", str(recipe), "--out", str(tiny_checkpoint), "--resume"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--hidden 64 (saved: 32)" in proc.stderr


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(r.relative_to(REPO)) for r in RECIPES])
def test_every_shipped_recipe_reads(recipe):
    assert read_recipe(recipe, train)


# Settings a checkpoint records that a recipe fixes (paths, time budgets and thread counts are the machine's).
MODEL_KEYS = ("cell", "attention", "input_feed", "layers", "bidirectional", "embed", "hidden", "dropout")
TRAIN_KEYS = ("epochs", "batch_size", "lr", "label_smoothing", "patience", "lr_patience", "seed", "dev_limit", "kd", "kd_beam",
              "kd_alpha", "kd_top_k", "kd_mix_references")


@pytest.mark.parametrize("recipe,checkpoint,arch_recipe", [
    ("g2p-en.yaml", "g2p-en-checkpoint", "g2p-en.yaml"),
    ("g2p-en-small/cycle6.yaml", "g2p-en-small-checkpoint", "g2p-en-small/cycle1.yaml"),
])
def test_the_shipped_recipes_are_the_settings_the_shipped_checkpoints_recorded(recipe, checkpoint, arch_recipe):
    """The small model's architecture comes from its first cycle (later cycles start from its weights)."""
    settings = read_recipe(REPO / "recipes" / recipe, train)
    arch = read_recipe(REPO / "recipes" / arch_recipe, train)
    config = json.loads((REPO / "models" / checkpoint / "config.json").read_text())
    saved = json.loads((REPO / "models" / checkpoint / "train.json").read_text())["train_config"]
    defaults = {p.name: p.default for p in train.params}
    for key in MODEL_KEYS:
        assert arch.get(key, defaults[key]) == config[key], key
    for key in TRAIN_KEYS:
        if key in saved:
            assert settings.get(key, defaults[key]) == saved[key], key
    teachers = [saved["teacher"], *saved["teacher_ensemble"]] if saved.get("teacher") else []
    assert len(settings.get("teacher", ())) == len(teachers)


def test_read_recipe_refuses_a_directory(tmp_path):
    with pytest.raises(Seq2EdgeError, match="no such recipe file"):
        read_recipe(tmp_path, train)
