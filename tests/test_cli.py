"""The `deepverse` command line: help lists every subcommand."""
import pytest

from deepverse_env.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "collect" in out and "bench" in out
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "sim" in out and "model" in out


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["teleport"])
    assert e.value.code == 2 and "teleport" in capsys.readouterr().err
