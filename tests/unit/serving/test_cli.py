"""``attune serve models``: options from the config and the command line, and clear errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from attune.cli import build_parser, main
from attune.config import AttuneConfig, load_config
from attune.serving.server import ServerOptions


def test_missing_model_config_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.config"
    assert main(["serve", "models", "--model-config-file", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"model config file {missing} does not exist" in err
    assert "leave it unset to serve the model repository" in err


def test_options_come_from_the_config_then_the_command_line(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        environ={
            "ATTUNE__PATHS__VAR_DIR": str(tmp_path),
            "ATTUNE__SERVING__REST_PORT": "9501",
            "ATTUNE__SERVING__MODEL_CONFIG_FILE": "serving/models.config",
            "ATTUNE__SERVING__BATCHING__ENABLED": "true",
            "ATTUNE__SERVING__BATCHING__BATCH_TIMEOUT_MS": "5",
        },
    )
    opts = ServerOptions.from_config(cfg)
    # relative config paths are taken under var_dir, as every attune path
    assert opts.model_config_file == tmp_path / "serving" / "models.config"
    assert (opts.rest_port, opts.grpc_port, opts.batching) == (9501, 8500, True)
    assert opts.batch_timeout_s == pytest.approx(0.005)
    assert opts.repository == tmp_path / "models"

    args = build_parser().parse_args(
        ["serve", "models", "--rest-port", "7000", "--no-batching", "--repository", "repo"]
    )
    opts = ServerOptions.from_config(cfg, args)
    assert (opts.rest_port, opts.batching) == (7000, False)
    assert opts.repository == Path("repo").absolute()  # typed paths are taken from the cwd


def test_defaults_are_tf_servings_ports() -> None:
    opts = ServerOptions.from_config(AttuneConfig(), argparse.Namespace())
    assert (opts.rest_port, opts.grpc_port, opts.model_config_file) == (8501, 8500, None)
