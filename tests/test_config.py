"""The training configuration: one default per option, checks by rule, the schema of a run's
config.json and its numbered migrations, and the resume rule of train()."""

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from problems import TINY, assert_equal_states, make_old, run_states
from scoresde import (NoiseClassifier, TrainConfig, convert_score_sde, load_run, train,
                      train_classifier)
from scoresde.checks import OptionError
from scoresde.config import (GROUPS, MIGRATIONS, OPTIONS, RUN, SCHEMA, flat_config,
                             group_config, migrate, option_default, option_rule, upgrade_config)
from scoresde.models import ScoreSDEModel
from scoresde.runs import read_config, write_config

TINY_OPTIONS = {k: v for k, v in TINY.items() if k != "progress"}


def test_every_option_is_in_one_group_and_train_writes_its_default(tmp_path):
    names = [f.name for cls in GROUPS.values() for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names)) == len(OPTIONS)
    assert TrainConfig().options() == {k: option_default(k) for k in OPTIONS}
    train(tmp_path / "run", steps=1, batch_size=8, progress=False)
    config = read_config(tmp_path / "run")
    resolved = {"sde", "net", "sde_params", "net_params", "steps", "batch_size", "cond_aug",
                "sigma_data"}
    assert {k: config[k] for k in OPTIONS if k not in resolved} == \
        {k: option_default(k) for k in OPTIONS if k not in resolved}
    assert config["schema"] == SCHEMA and config["sde"]["name"] == option_default("sde")


def test_an_unknown_option_is_refused_before_anything_is_made(tmp_path):
    with pytest.raises(TypeError, match=r"\bstepz\b.*\bdata\b"):  # the name, the options
        train(tmp_path / "run", stepz=3, progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(TypeError, match=r"\ba, b\b"):
        TrainConfig.of(a=1, b=2)


@pytest.mark.parametrize("options, error, value", [
    ({"lr": 0.0}, ValueError, "0.0"), ({"steps": True}, ValueError, "True"),
    ({"weighting": "l2"}, ValueError, "'l2'"), ({"compile": 1}, TypeError, "1"),
    ({"label_dropout": 1.0}, ValueError, "1.0"), ({"ema_decay": 1.0}, ValueError, "1.0"),
])
def test_check_applies_each_options_rule(options, error, value, tmp_path):
    (name,) = options
    words = rf"^[^\n]*\b{name}\b[^\n]*{re.escape(value)}"  # one line: the option, the value
    with pytest.raises(error, match=words):
        TrainConfig.of(**options).check()
    with pytest.raises(error, match=words):  # train() refuses it the same way
        train(tmp_path / "run", **{**TINY, "steps": 1, **options})
    assert not (tmp_path / "run").exists()
    assert TrainConfig.of(steps=np.int64(3)).check().loop.steps.__class__ is int
    assert TrainConfig.of(grad_clip=None, batch_size=None).check().optim.grad_clip is None


def test_groups_are_frozen_and_replace_makes_a_copy():
    config = TrainConfig.of(lr=1e-3, steps=10)
    assert (config.optim.lr, config.loop.steps, config.network.net) == (1e-3, 10, "auto")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.loop.steps = 5
    longer = config.replace(steps=20)
    assert (longer.loop.steps, config.loop.steps, longer.optim.lr) == (20, 10, 1e-3)
    assert option_rule("steps") == {"kind": "int", "low": 1}


def test_a_config_trains_what_the_keywords_train_and_a_run_trains_again(tmp_path):
    train(tmp_path / "keywords", steps=3, warmup=1, sde="ve", **TINY)
    config = TrainConfig.of(steps=3, warmup=1, sde="ve", **TINY_OPTIONS)
    train(tmp_path / "config", config, progress=False)
    assert_equal_states(run_states(tmp_path / "keywords"), run_states(tmp_path / "config"))
    again = TrainConfig.from_run(load_run(tmp_path / "keywords")[2])
    assert again.loss.sde == "ve" and again.loss.sde_params["sigma_max"] > 0
    assert again.network.net_params["hidden"] == 16 and "event_shape" not in \
        again.network.net_params
    train(tmp_path / "again", again, progress=False)
    assert_equal_states(run_states(tmp_path / "keywords"), run_states(tmp_path / "again"))


# ----- versions of config.json ----------------------------------------------------------------
def test_each_migration_fills_in_what_its_version_lacked():
    assert SCHEMA == len(MIGRATIONS)
    oldest = {"data": "moons.npy", "conditional": True}
    new = upgrade_config(oldest)
    assert oldest == {"data": "moons.npy", "conditional": True}  # left as it was
    assert new["schema"] == SCHEMA
    assert (new["objective"], new["label_dropout"], new["log_snr_share"]) == ("score", 0.0, 0.0)
    assert (new["embed_dim"], new["downsample"], new["super_res"]) == (0, 1, None)
    assert new["pixels"] is False  # .npy data before image support: the stored values
    assert (new["precision"], new["batch_gpu"], new["eval_every"]) == ("fp32", None, None)
    assert upgrade_config(new) == new
    assert TrainConfig.from_run(oldest).data.pixels is False  # read as that run was
    # A config that records its schema takes only the steps after it.
    current = {"schema": SCHEMA, "data": "moons"}
    assert upgrade_config(current) == current


@pytest.mark.parametrize("schema, words", [
    (SCHEMA + 1, rf"\bschema {SCHEMA + 1}\b.*\bscoresde\b"),  # a newer scoresde's
    ("2", r"\bschema\b.*'2'"), (-1, r"\bschema\b.*-1\b")])
def test_a_config_of_an_unknown_schema_is_refused(schema, words):
    with pytest.raises(ValueError, match=words):
        upgrade_config({"schema": schema, "data": "moons"})


@pytest.mark.parametrize("layout", ["grouped", "flat"])
def test_a_run_from_a_newer_version_is_refused_by_name(tmp_path, layout):
    train(tmp_path / "run", steps=1, **TINY)
    path = tmp_path / "run" / "config.json"
    config = json.loads(path.read_text()) if layout == "grouped" else read_config(tmp_path / "run")
    path.write_text(json.dumps(dict(config, schema=SCHEMA + 1)))
    text = path.read_text()
    newer = rf"\bschema {SCHEMA + 1}\b.*\bscoresde\b"  # the schema, and whose it is
    for read in (read_config, load_run):
        with pytest.raises(ValueError, match=newer):
            read(tmp_path / "run")
    with pytest.raises(ValueError, match=newer):
        train(tmp_path / "run", steps=2, resume=True, **TINY)
    assert path.read_text() == text and run_states(tmp_path / "run")["step"] == 1


# ----- the layout of config.json --------------------------------------------------------------
def test_the_file_is_grouped_by_concern_and_read_flat(tmp_path):
    train(tmp_path / "run", steps=1, **TINY)
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert list(written) == ["schema", *GROUPS, RUN] and written["schema"] == SCHEMA == 10
    for group, cls in GROUPS.items():  # every option, in the order of the group's fields
        names = [f.name for f in dataclasses.fields(cls)]
        assert list(written[group]) == [n for n in names if n not in ("sde_params", "net_params")]
    assert written["data"]["data"] == "8gaussians" and written["loss"]["sde"]["name"] == "vp"
    assert written["network"]["net"]["hidden"] == 16 and written["loss"]["sigma_data"] > 0
    assert list(written[RUN])[:4] == ["run_dir", "resume", "device", "progress"]
    assert {"data_shape", "num_classes", "is_image", "num_params"} <= set(written[RUN])
    assert not set(written[RUN]) & set(OPTIONS)
    config = read_config(tmp_path / "run")  # the flat view the library works on
    assert config == flat_config(written) == migrate(written)
    assert config["sde"] == written["loss"]["sde"] and config["data_shape"] == [2]


def test_group_config_and_flat_config_are_inverses(tmp_path):
    train(tmp_path / "run", steps=1, **TINY)
    flat = dict(read_config(tmp_path / "run"), my_note="kept", data={"means": [[0.0]]})
    grouped = group_config(flat)
    assert grouped[RUN]["my_note"] == "kept" and grouped["data"]["data"] == {"means": [[0.0]]}
    assert flat_config(grouped) == flat and group_config(flat_config(grouped)) == grouped
    assert list(group_config(flat_config(grouped))[RUN]) == list(grouped[RUN])
    bare = {"data": None, "sde": {"name": "vp"}, "source": {"format": "x"}}  # no schema
    assert group_config(bare) == {**{g: {} for g in GROUPS}, "data": {"data": None},
                                  "loss": {"sde": {"name": "vp"}}, RUN: {"source": {"format": "x"}}}
    assert flat_config(group_config(bare)) == bare
    for broken, words in [({"optim": {"steps": 3}}, "'steps' in section 'optim'.*'loop'"),
                          ({"loop": {"my_note": 1}}, "'my_note' in section 'loop'.*'run'"),
                          ({RUN: {"lr": 1.0}}, "'lr' in section 'run'.*'optim'"),
                          ({"optimiser": {}}, "unknown section 'optimiser'"),
                          ({"loop": [1]}, "'loop' must be a JSON object")]:
        with pytest.raises(ValueError, match=words):
            flat_config({"schema": SCHEMA, **broken})


def test_a_converted_run_is_written_grouped_at_the_current_schema(tmp_path):
    checkpoint = torch.load(Path(__file__).parent / "data" / "score_sde_vp_ddpmpp_small.pt",
                            weights_only=True)["checkpoint"]
    run = convert_score_sde(checkpoint, "small_ddpmpp_continuous", tmp_path / "run")
    written = json.loads((run / "config.json").read_text())
    assert list(written) == ["schema", *GROUPS, RUN] and written["schema"] == SCHEMA
    assert written[RUN]["source"]["format"] == "score_sde_pytorch"
    assert written["data"]["data"] is None and written["loss"]["sde"]["name"] == "vp"
    config = read_config(run)  # what migrations fill in for a run without a schema, written
    assert config["label_dropout"] == 0.0 and config["class_names"] is None
    assert isinstance(load_run(run)[0], ScoreSDEModel)


def test_a_flat_schema_7_run_loads_resumes_and_is_written_grouped(tmp_path):
    run = tmp_path / "run"
    train(run, steps=2, checkpoint_every=1, **TINY)
    train(tmp_path / "straight", steps=3, checkpoint_every=1, **TINY)
    new = read_config(run)
    old = dict(new, schema=7)  # as schema 7 wrote it: flat, one key each
    (run / "config.json").write_text(json.dumps(old, indent=2))
    assert read_config(run) == new and load_run(run)[2]["net"] == new["net"]
    train(run, steps=3, resume=True, progress=False)
    written = json.loads((run / "config.json").read_text())
    assert list(written) == ["schema", *GROUPS, RUN] and written["schema"] == SCHEMA
    assert read_config(run) == dict(new, steps=3, resume=True)
    assert_equal_states(run_states(run), run_states(tmp_path / "straight"))


# ----- resuming -------------------------------------------------------------------------------
def test_resume_takes_the_options_not_given_from_the_run(tmp_path):
    run = tmp_path / "run"
    train(run, steps=2, warmup=1, lr=1e-3, sde="ve", sde_params={"sigma_max": 10.0},
          checkpoint_every=1, **TINY)
    train(run, resume=True, steps=3, progress=False)  # nothing else given: all the run's own
    config = read_config(run)
    assert (config["warmup"], config["lr"], config["checkpoint_every"]) == (1, 1e-3, 1)
    assert config["sde"]["sigma_max"] == 10.0 and config["net"]["hidden"] == 16
    assert run_states(run)["step"] == 3
    with pytest.raises(ValueError, match=r"\bconfig\.json\b.*\blr\b"):
        train(run, resume=True, steps=4, lr=5e-3, progress=False)  # given, and not the run's
    train(run, TrainConfig.from_run(config).replace(steps=4), resume=True, progress=False)
    assert run_states(run)["step"] == 4


def test_resume_never_loads_features_that_only_the_runs_config_names(tmp_path):
    run = tmp_path / "run"
    train(run, steps=1, **TINY)
    payload = str(tmp_path / "payload.pt")  # never read: the check comes first
    write_config(run, dict(read_config(run), eval_every=1, eval_features=payload))
    with pytest.raises(OptionError, match=r"\bTorchScript\b.*payload\.pt") \
            as info:
        train(run, resume=True, steps=2, progress=False)
    assert info.value.option == "eval_features" and run_states(run)["step"] == 1


def test_old_runs_resume_through_the_migrations(tmp_path):
    run = tmp_path / "run"
    train(run, steps=2, **TINY)
    make_old(run, ("log_snr_share", "precision", "eval_every", "eval_n", "eval_features",
                   "label_dropout", "objective"))
    # An unconditional run's label_dropout (filled in as 0) means nothing: any value resumes it.
    train(run, resume=True, steps=3, label_dropout=0.3, progress=False)
    config = read_config(run)
    assert config["schema"] == SCHEMA and config["log_snr_share"] == 0.0
    assert run_states(run)["step"] == 3


def test_a_classifier_trains_from_a_config(tmp_path):
    train_classifier(tmp_path / "clf", TrainConfig.of(steps=1, **TINY_OPTIONS), progress=False)
    assert isinstance(load_run(tmp_path / "clf")[0], NoiseClassifier)
