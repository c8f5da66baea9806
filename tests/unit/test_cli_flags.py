"""Every numeric flag of every `abstain` subcommand refuses a bad value in one line (exit 2), and
every option's --help states its default. The table is checked against the real parser, so a new
numeric flag without a row here fails the suite."""

from __future__ import annotations

import argparse
import os

import pytest

from serve.cli.main import build_parser, main

MODEL = "models/mnist1d-maxsup/1"
# Positional / required arguments that let argparse reach the flag under test.
REQUIRED = {"train": ["--out", "/nonexistent/never"], "export": ["/nonexistent/run", "--to", "/x"],
            "calibrate": [MODEL], "evaluate": [MODEL], "study": [],
            "serve": ["{empty}"], "package": [MODEL, "--triton", "{empty}"],
            "review": []}    # an existing folder without models: nothing can start
# (command, flag, bad value, words the one-line message must hold)
TABLE = [
    ("train", "--epochs", "0", "pass a whole number ≥ 1"),
    ("train", "--batch-size", "-4", "≥ 1"),
    ("train", "--lr", "0", "> 0"),
    ("train", "--lr", "nan", "not a finite number"),
    ("train", "--weight-decay", "-1", "≥ 0"),
    ("train", "--seed", "-1", "≥ 0"),
    ("train", "--stop-after", "0", "≥ 1"),
    ("export", "--atol", "0", "> 0"),
    ("study", "--seeds", "0", "≥ 1"),
    ("study", "--epochs", "2.5", "not a whole number"),
    ("study", "--batch-size", "0", "≥ 1"),
    ("study", "--lr", "-1", "> 0"),
    ("study", "--nc-samples", "3", "≥ 10"),
    ("study", "--threads", "-2", "≥ 0"),
    ("calibrate", "--target-risk", "2", "not in (0, 1)"),
    ("calibrate", "--target-risk", "0", "not in (0, 1)"),
    ("calibrate", "--delta", "1", "not in (0, 1)"),
    ("calibrate", "--target-coverage", "95", "(0, 1]"),
    ("calibrate", "--tune-fraction", "1", "not in (0, 1)"),
    ("calibrate", "--temperature", "0", "> 0"),
    ("calibrate", "--seed", "x", "not a whole number"),
    ("calibrate", "--batch-size", "0", "≥ 1"),
    ("calibrate", "--max-pending", "5", "(0, 1]"),
    ("calibrate", "--max-defer", "5", "not in (0, 1]"),
    ("evaluate", "--confidence", "2", "not in (0, 1): pass a fraction such as 0.95"),
    ("evaluate", "--confidence", "0", "not in (0, 1)"),
    ("evaluate", "--batch-size", "0", "≥ 1"),
    ("serve", "--port", "-1", "must be ≥ 1"),
    ("serve", "--workers", "0", "must be ≥ 1"),
    ("serve", "--max-batch-size", "0", "must be ≥ 1"),
    ("serve", "--max-queue-size", "0", "must be ≥ 1"),
    ("serve", "--overload-queue-ms", "-1", "must be ≥ 0"),
    ("serve", "--max-instances", "0", "must be ≥ 1"),
    ("serve", "--max-body-bytes", "10", "must be ≥ 1024"),
    ("serve", "--request-timeout-s", "0", "must be > 0"),
    ("serve", "--poll-interval-s", "-1", "must be ≥ 0"),
    ("serve", "--intra-op-threads", "-1", "use auto, 0"),
    ("serve", "--intra-op-threads", "x", "valid integer"),
    ("serve", "--max-inflight", "0", "must be ≥ 1"),
    ("serve", "--max-body-buffer-bytes", "10", "must be ≥ 1024"),
    ("serve", "--max-control-body-bytes", "10", "must be ≥ 1024"),
    ("serve", "--max-header-bytes", "10", "must be ≥ 1024"),
    ("serve", "--header-timeout-s", "0", "must be > 0"),
    ("serve", "--body-timeout-s", "0", "must be > 0"),
    ("serve", "--keep-alive-s", "0", "must be > 0"),
    ("serve", "--max-image-pixels", "0", "must be ≥ 1"),
    ("serve", "--max-image-pixels-per-s", "0", "must be ≥ 1"),
    ("serve", "--shed-hold-s", "61", "must be ≤ 60"),
    ("serve", "--metrics-port", "70000", "must be ≤ 65535"),
    ("serve", "--grpc-port", "70000", "must be ≤ 65535"),
    ("serve", "--grpc-port", "-1", "must be ≥ 0"),
    ("serve", "--drift-window", "5", "must be ≥ 10"),
    ("serve", "--drift-alpha", "2", "must be < 1"),
    ("serve", "--audit-rate", "2", "must be ≤ 1"),
    ("serve", "--live-delta", "0", "must be > 0"),
    ("serve", "--review-ttl-s", "0", "must be > 0"),
    ("serve", "--retention-days", "0", "must be > 0"),
    ("serve", "--retention-max-rows", "0", "must be ≥ 1"),
    ("serve", "--shift-alpha", "1", "must be < 1"),
    ("serve", "--shift-horizon", "0", "must be ≥ 1"),
    ("serve", "--change-arl", "5", "must be ≥ 10"),
    ("package", "--version", "0", "≥ 1"),
]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.option_strings and a.help != argparse.SUPPRESS
            and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


def _numeric(a: argparse.Action) -> bool:
    if a.type in (int, float) or getattr(a.type, "numeric", False):
        return True
    return isinstance(a.default, (int, float)) and not isinstance(a.default, bool)


def test_the_table_covers_every_numeric_flag() -> None:
    subs = _subparsers()
    assert set(REQUIRED) == set(subs), "a new subcommand needs its row(s) here"
    numeric = {(name, a.option_strings[-1]) for name, p in subs.items()
               for a in _options(p) if _numeric(a)}
    options = {(name, a.option_strings[-1]) for name, p in subs.items() for a in _options(p)}
    table = {(cmd, flag) for cmd, flag, _, _ in TABLE}
    assert numeric <= table, f"numeric flags without a row: {sorted(numeric - table)}"
    assert table <= options, f"rows for flags that do not exist: {sorted(table - options)}"


@pytest.mark.parametrize("cmd, flag, value, words", TABLE, ids=[f"{c} {f} {v}" for c, f, v, _ in TABLE])
def test_a_bad_numeric_flag_exits_2_with_a_one_line_fix(cmd, flag, value, words, capsys,
                                                        monkeypatch, tmp_path) -> None:
    for k in [k for k in os.environ if k.startswith("ABSTAIN_")]:
        monkeypatch.delenv(k)
    required = [a.format(empty=tmp_path) for a in REQUIRED[cmd]]
    assert main([cmd, *required, f"{flag}={value}"]) == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith(f"abstain {cmd}: error:") and flag in lines[0], lines[0]
    assert words in lines[0], lines[0]
    assert "Traceback" not in out.err + out.out


def test_every_option_shows_its_default_and_every_command_says_what_it_does() -> None:
    missing = []
    for name, p in _subparsers().items():
        assert p.description, f"abstain {name} has no description"
        fmt = p._get_formatter()
        for a in _options(p):
            if isinstance(a, argparse._StoreTrueAction) or a.required:
                continue                  # off unless given; no default to show
            if "default" not in fmt._expand_help(a).lower():
                missing.append(f"{name} {a.option_strings[-1]}")
    assert not missing, f"--help shows no default for: {', '.join(missing)}"


def test_defaults_are_rendered() -> None:
    text = _subparsers()["evaluate"].format_help()
    assert "(default: 0.95)" in text and "(default: 1024)" in text
    assert "':test'" in text                       # --data defaults to the model's own test split


@pytest.mark.parametrize("spec", ["mnist1d:test", "mnist1d?n=500:calibration", "digits:tune"])
def test_train_refuses_a_split_it_would_not_train_on(spec, capsys, tmp_path) -> None:
    out = tmp_path / "run"
    assert main(["train", "--data", spec, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "training always uses the 'train' split" in err and spec.rsplit(":", 1)[0] in err
    assert not out.exists()


def test_train_accepts_the_whole_dataset_or_its_train_split() -> None:
    p = _subparsers()["train"]
    for spec in ("mnist1d", "mnist1d?n=500:train", "npz:/data/x.npz"):
        assert p.parse_args(["--data", spec, "--out", "x"]).data == spec


@pytest.mark.parametrize(("flag", "value", "words"), [
    ("--duration", "0.5", "≥ 1"), ("--runtime-seconds", "0", "> 0"),
    ("--max-batch-size", "0", "≥ 1"), ("--ceiling-threads", "-1", "≥ 0"),
    ("--overload-duration", "0", "≥ 1")])
def test_the_bench_script_refuses_bad_flags_in_one_line(flag, value, words, capsys) -> None:
    from bench.cli import main as bench_main

    with pytest.raises(SystemExit) as exit_:
        bench_main([flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag in err and words in err, err


@pytest.mark.parametrize(("value", "words"), [
    ("fallback", "no stricter threshold"), ("nope", "'keep', 'defer' or 'fallback'")])
def test_on_risk_alarm_refuses_what_it_cannot_do(value, words, capsys, monkeypatch,
                                                  tmp_path) -> None:
    for k in [k for k in os.environ if k.startswith("ABSTAIN_")]:
        monkeypatch.delenv(k)
    assert main(["serve", str(tmp_path), f"--on-risk-alarm={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--on-risk-alarm" in err, err
    assert words in err and "Traceback" not in err, err
