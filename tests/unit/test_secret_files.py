"""Every secret of `abstain serve` has a file form (``--X-file`` and ``ABSTAIN_X_FILE``); a secret
given as a flag is taken and warned about; a bad file or a secret given twice exits 2 in one line.
(The end-to-end version, with ``ps`` and a real server, is tests/e2e/test_loop_trust.py.)"""

from __future__ import annotations

import logging
import os

import pytest

from serve.cli.main import build_parser, main
from serve.cli.serve import _SECRET_FILES, _secrets
from serve.server.settings import SECRETS


@pytest.fixture(autouse=True)
def _no_abstain_env(monkeypatch) -> None:
    for name in [k for k in os.environ if k.startswith("ABSTAIN_")]:
        monkeypatch.delenv(name)


def _resolve(*argv: str) -> dict:
    args = build_parser().parse_args(["serve", *argv])
    overrides = {name: getattr(args, name, None) for name in SECRETS}
    _secrets(args, overrides)
    return overrides


def test_every_secret_has_a_file_flag() -> None:
    assert [name for name, _ in _SECRET_FILES] == list(SECRETS)
    options = {o for a in build_parser()._subparsers._group_actions[0].choices["serve"]._actions
               for o in a.option_strings}
    for name in SECRETS:
        assert "--" + name.replace("_", "-") + "-file" in options, name
    assert "--metrics-key" not in options           # a secret with no command-line form at all


@pytest.mark.parametrize("name", SECRETS)
def test_a_secret_from_its_file_flag_or_variable(name, tmp_path, monkeypatch, caplog) -> None:
    flag = "--" + name.replace("_", "-")
    path = tmp_path / "secret"
    path.write_text("  postgresql://u:pw@db/x  \nignored second line\n")
    with caplog.at_level(logging.WARNING):
        assert _resolve(f"{flag}-file", str(path))[name] == "postgresql://u:pw@db/x"
        monkeypatch.setenv(f"ABSTAIN_{name.upper()}_FILE", str(path))
        assert _resolve()[name] == "postgresql://u:pw@db/x"
    assert "visible to every user" not in caplog.text


@pytest.mark.parametrize("name", [n for n in SECRETS if n != "metrics_key"])
def test_a_secret_given_as_a_flag_is_warned_about(name, caplog) -> None:
    flag = "--" + name.replace("_", "-")
    with caplog.at_level(logging.WARNING):
        assert _resolve(flag, "postgresql://u:pw@db/x")[name] == "postgresql://u:pw@db/x"
    assert f"{flag} on the command line is visible to every user" in caplog.text
    assert f"prefer {flag}-file or ABSTAIN_{name.upper()}" in caplog.text


def test_a_database_url_without_a_password_is_not_a_secret(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        _resolve("--database-url", "postgresql://abstain@db/loop")
    assert "visible to every user" not in caplog.text


@pytest.mark.parametrize("case, words", [
    ("missing", "cannot read it (FileNotFoundError)"),
    ("empty", "is empty: write the secret on its first line"),
    ("twice", "--reviewer-key and --reviewer-key-file both given"),
])
def test_a_bad_secret_file_exits_2_in_one_line(case, words, tmp_path, capsys) -> None:
    path = tmp_path / "key"
    if case != "missing":
        path.write_text("\n" if case == "empty" else "k\n")
    extra = ["--reviewer-key", "k"] if case == "twice" else []
    assert main(["serve", str(tmp_path), "--reviewer-key-file", str(path), *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
