"""The CLI package (dinov2clip/cli/) as users reach it: one app under both import paths, with
every command in the order `pipeline --help` has always listed them."""

import typer

COMMANDS = ["run", "data", "extract", "train", "eval", "zeroshot", "segment", "index", "search",
            "compare", "serve", "push"]


def test_pipeline_is_the_cli_package_under_its_old_name():
    from dinov2clip import cli, pipeline
    from dinov2clip.cli.app import os_fault

    assert pipeline.app is cli.app and pipeline.main is cli.main
    assert pipeline.os_fault is os_fault  # imported from here before the split


def test_every_command_is_registered_in_order():
    from dinov2clip.cli import app

    assert list(typer.main.get_command(app).commands) == COMMANDS
