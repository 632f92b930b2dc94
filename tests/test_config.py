import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dinov2clip.config import ConfigError, config_hash, load_config
from dinov2clip.pipeline import app
from tests.helpers import REPO, TIMEOUT, demo_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_shipped_configs_load_with_seed_defaults():
    seed = load_config(REPO / "configs" / "cc12m-seed.toml")
    assert seed.extract.dino_model == "facebook/dinov2-base"
    assert (seed.extract.clip_model, seed.extract.clip_pretrained) == ("ViT-B-16", "openai")
    p = seed.train.projector
    assert (p.kind, p.in_dim, p.out_dim, p.width, p.depth, p.head_width) == (
        "residual", 768, 512, 2048, 6, 1024)
    assert (seed.train.epochs, seed.train.batch_size, seed.train.scheduler) == (16, 4096,
                                                                                "onecycle")
    assert seed.train.loss == {"unit_mse": 1.0} and seed.train.pooling == "token_mean"
    assert seed.data.image_size == 256 and seed.data.resize_mode == "keep_ratio"
    demo = load_config(REPO / "configs" / "demo.toml")
    assert demo.data.synthetic.tiny_models and demo.train.device == "cpu"


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "[train]\nepochz = 3\n")
    with pytest.raises(ConfigError, match=r"c\.toml: unknown key 'train\.epochz'"):
        load_config(path)


def test_nested_unknown_key(tmp_path):
    path = write(tmp_path, "[train.projector]\nwidht = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train\.projector\.widht'"):
        load_config(path)


def test_wrong_type_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"'train\.epochs' must be int, got str"):
        load_config(write(tmp_path, '[train]\nepochs = "four"\n'))
    with pytest.raises(ConfigError, match=r"'train\.loss\.unit_mse' must be float"):
        load_config(write(tmp_path, '[train]\nloss = {unit_mse = "a"}\n'))
    with pytest.raises(ConfigError, match="must be int, got bool"):
        load_config(write(tmp_path, "[train]\nepochs = true\n"))


def test_int_is_accepted_where_float_is_expected(tmp_path):
    cfg = load_config(write(tmp_path, "[train]\nlr = 1\n"))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


def test_overrides_apply_and_are_checked(tmp_path):
    path = write(tmp_path, "[train]\nepochs = 3\n")
    cfg = load_config(path, ["train.epochs=5", "train.run=abc", "train.projector.width=64",
                             "eval.ks=[1, 2]"])
    assert (cfg.train.epochs, cfg.train.run, cfg.train.projector.width) == (5, "abc", 64)
    assert cfg.eval.ks == [1, 2]
    with pytest.raises(ConfigError, match="unknown key 'train.nope'"):
        load_config(path, ["train.nope=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, ["train.epochs"])


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[train\n"))


def test_config_hash_changes_with_values(tmp_path):
    a = load_config(write(tmp_path, "[train]\nepochs = 3\n"))
    b = load_config(tmp_path / "c.toml", ["train.epochs=4"])
    assert config_hash(a.train) != config_hash(b.train)
    assert config_hash(a.train) == config_hash(load_config(tmp_path / "c.toml").train)


def test_installed_command_reports_config_errors_in_one_line(tmp_path):
    # The one test of the console script uv installed, in its own process, as a user types it;
    # the other CLI tests run the same typer app in this process (CliRunner).
    def pipeline(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(sys.executable).with_name("pipeline")), *args],
                              capture_output=True, text=True, timeout=TIMEOUT)

    proc = pipeline("train", "--config", str(write(tmp_path, "[train]\nepochz = 3\n")))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown key 'train.epochz'" in lines[0]
    assert "Traceback" not in proc.stderr
    proc = pipeline("extract", "--config", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2 and "config file not found" in proc.stderr


def test_cli_help_lists_every_command():
    out = CliRunner().invoke(app, ["--help"]).stdout
    for command in ("run", "data", "extract", "train", "eval"):
        assert command in out
    assert "--stage" in CliRunner().invoke(app, ["run", "--help"]).stdout


def test_a_stage_refuses_an_empty_required_value(tmp_path):
    path = write(tmp_path, f'artifacts = "{tmp_path}"\n[extract]\ndatasets = []\n')
    result = CliRunner().invoke(app, ["extract", "--config", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: missing required value 'extract.datasets' for this stage"]


@pytest.mark.parametrize(("override", "message"), [
    ('train.device="gpu"', "'train.device' must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ('extract.device="cuda:x"', "'extract.device' must be auto, cpu, cuda or cuda:N"),
    ('eval.device="tpu"', "'eval.device' must be auto, cpu, cuda or cuda:N"),
    ('extract.compute_dtype="fp8"', "'extract.compute_dtype' must be one of bf16, fp16, fp32"),
    ('train.compute_dtype="fp8"', "'train.compute_dtype' must be one of bf16, fp16, fp32"),
    ("train.lr=0", "'train.lr' must be positive, got 0.0"),
    ("train.lr=-1e-3", "'train.lr' must be positive"),
    ("train.epochs=0", "'train.epochs' must be at least 1, got 0"),
    ("train.batch_size=0", "'train.batch_size' must be at least 1, got 0"),
    ("extract.batch_size=-4", "'extract.batch_size' must be at least 1, got -4"),
    ("extract.num_workers=-1", "'extract.num_workers' must be at least 0"),
    ("train.loss={unit_mes=1.0}", "'train.loss.unit_mes' is not a loss (known: unit_mse,"),
    ("train.loss={unit_mse=-1.0}", "'train.loss.unit_mse' must be at least 0.0"),
    ("train.loss={}", "'train.loss' is empty"),
    ('train.scheduler="cosin"', "'train.scheduler' must be one of onecycle, cosine, constant"),
    ('train.pooling="mean"', "'train.pooling' must be one of cls, patch_mean, token_mean"),
    ('train.placement="gpu"', "'train.placement' must be one of auto, device, pinned"),
    ('train.select_metric="val_r1"', "'train.select_metric' must be one of val_loss,"),
    ('train.select_metric="evalset_pct_clip"', "got 'evalset_pct_clip'"),  # no val_evalset
    ('train.projector.kind="mlp"', "'train.projector.kind' must be one of residual, linear"),
    ("train.projector.width=0", "'train.projector.width' must be at least 1"),
    ("train.ema_decay=1.0", "'train.ema_decay' must be in [0, 1), got 1.0"),
    ("train.val_fraction=1.5", "'train.val_fraction' must be in [0, 1)"),
    ('train.val_evalset="mscoco"', "'train.val_evalset' 'mscoco' is also in eval.sets"),
    ("eval.ks=[1, 0]", "'eval.ks' must be positive integers, got [1, 0]"),
    ('eval.zeroshot_templates="imagenet1k"', "'eval.zeroshot_templates' must be one of"),
    ('extract.decode="nvjpeg"', "'extract.decode' must be one of cpu, gpu, auto"),
    ('data.distributor="slurm"', "'data.distributor' must be one of multiprocessing, pyspark"),
    ('data.resize_mode="crop"', "'data.resize_mode' must be one of no, border, keep_ratio"),
    ('data.input_format="xlsx"', "'data.input_format' must be one of tsv, tsv.gz, csv"),
])
def test_values_that_cannot_work_fail_when_the_config_is_read(tmp_path, override, message):
    path = write(tmp_path, "[train]\nepochs = 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, [override])
    assert str(err.value).startswith(f"--set {override}: ")  # the command line, not c.toml
    assert message in str(err.value)


def test_a_bad_value_in_the_file_names_the_file(tmp_path):
    path = write(tmp_path, "[train]\nepochs = 0\n")
    with pytest.raises(ConfigError, match=r"c\.toml: 'train\.epochs' must be at least 1, got 0"):
        load_config(path)
    # The file's bad value is overridden on the command line: fine.
    assert load_config(path, ["train.epochs=2"]).train.epochs == 2


def test_set_typos_name_the_command_line(tmp_path):
    path = write(tmp_path, "[train]\nepochs = 3\n")
    with pytest.raises(ConfigError, match=r"^--set train\.epohcs=4: unknown key 'train\.epohcs'"):
        load_config(path, ["train.epohcs=4"])
    with pytest.raises(ConfigError, match=r"^--set train\.epochs=four: 'train\.epochs' must be "
                                          "int"):
        load_config(path, ["train.epochs=four"])
    with pytest.raises(ConfigError, match=r"^--set train\.projector\.widht=3: unknown key"):
        load_config(path, ["train.projector.widht=3"])
    with pytest.raises(ConfigError, match=r"c\.toml: unknown key 'train\.epohcs'"):
        load_config(write(tmp_path, "[train]\nepohcs = 3\n"), ["train.epochs=4"])


def test_checked_names_match_the_code_that_uses_them():
    from dinov2clip.config import COMPUTE_DTYPES, LOSS_NAMES, PROJECTOR_KINDS, TEMPLATE_SETS
    from dinov2clip.device import _COMPUTE
    from dinov2clip.evaluate import templates
    from dinov2clip.models.projector import PROJECTORS
    from dinov2clip.train.losses import LOSSES

    assert tuple(LOSSES) == LOSS_NAMES and tuple(_COMPUTE) == COMPUTE_DTYPES
    assert set(PROJECTORS) == set(PROJECTOR_KINDS)
    assert tuple(templates.TEMPLATE_SETS) == TEMPLATE_SETS


def test_run_all_checks_losses_and_eval_sets_before_any_work(tmp_path):
    art = tmp_path / "artifacts"
    config = demo_config(tmp_path / "demo.toml", art)
    for override, message in (("train.loss={unit_mes=1.0}", "'train.loss.unit_mes' is not a loss"),
                              ('eval.sets=["shapes-tset"]', "unknown eval set 'shapes-tset'"),
                              ("train.epochs=0", "'train.epochs' must be at least 1"),
                              ('train.scheduler="cosin"', "'train.scheduler' must be one of")):
        result = CliRunner().invoke(app, ["run", "--stage", "all", "-c", str(config), "--set",
                                          override])
        assert result.exit_code == 2 and message in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1
        assert not art.exists(), "nothing was done before the check"


def test_search_refuses_k_0_and_an_empty_query_before_loading(tmp_path):

    missing = str(tmp_path / "no-index")
    zero = CliRunner().invoke(app, ["search", "--index", missing, "-k", "0", "a dog"])
    assert zero.exit_code == 2 and zero.stderr.strip() == "error: -k must be at least 1, got 0"
    empty = CliRunner().invoke(app, ["search", "--index", missing, ""])
    assert empty.exit_code == 2 and "empty query" in empty.stderr


def test_a_run_config_reads_back_as_the_same_dataclasses(tmp_path):
    import json

    from dinov2clip.config import Config, write_resolved
    from dinov2clip.store import RunDir

    cfg = load_config(write(tmp_path, "[train]\nepochs = 3\npooling = \"cls\"\n"))
    run = tmp_path / "run"
    write_resolved(cfg, run)
    read_run_config = lambda run: RunDir(run).read_config()  # noqa: E731 - the run's reader
    back = read_run_config(run)
    assert isinstance(back, Config) and back == cfg
    assert back.train.pooling == "cls" and back.train.projector.width == 2048

    payload = json.loads((run / "config.json").read_text())
    del payload["config"]["train"]["num_patch_tokens"]  # a run from before the key existed
    (run / "config.json").write_text(json.dumps(payload))
    assert read_run_config(run).train.num_patch_tokens == 256  # today's default, as documented

    payload["config"]["eval"].update(search="auto", use_gpu_faiss=True)  # removed keys: dropped
    (run / "config.json").write_text(json.dumps(payload))
    assert read_run_config(run).eval == cfg.eval

    payload["config"]["train"]["temperature"] = 0.07  # a key this version does not know
    (run / "config.json").write_text(json.dumps(payload))
    with pytest.raises(ConfigError, match=r"config\.json: unknown key 'train\.temperature' .*"
                                          "another version of dinov2clip"):
        read_run_config(run)
    (run / "config.json").write_text("[]")
    with pytest.raises(ConfigError, match="not a resolved run config"):
        read_run_config(run)


def test_use_options_are_checked_and_named_as_flags():
    from dinov2clip.config import UseOptions

    assert UseOptions().model_args() == {"device": "auto", "dtype": "bf16", "batch_size": 64}
    with pytest.raises(ConfigError, match="^--batch-size must be at least 1, got 0$"):
        UseOptions(batch_size=0)
    with pytest.raises(ConfigError, match="^--dtype must be one of bf16, fp16, fp32, got 'fp8'"):
        UseOptions(dtype="fp8")
    result = CliRunner().invoke(app, ["index", "--run", "nowhere", "--images", "nowhere",
                                      "--device", "gpu"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: --device must be auto, cpu, cuda or cuda:N, got "
                                     "'gpu'")
