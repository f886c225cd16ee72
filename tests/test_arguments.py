"""The command-line number types (pretext.arguments) and the shared one-shot command line
(pretext.arguments.command_main), through the commands that use them."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import pytest

from pretext.arguments import command_main, non_negative_int, number_list, parse_number, positive_int


@pytest.mark.parametrize("parse, text, message", [
    (lambda t: parse_number(t, int), "1.5", "expected an integer, got '1.5'"),
    (lambda t: parse_number(t, float), "half", "expected a number, got 'half'"),
    (non_negative_int, "-1", "must be >= 0, got -1"),
    (non_negative_int, "x", "expected an integer, got 'x'"),
    (positive_int, "0", "must be >= 1, got 0"),
    (positive_int, "2,3", "expected an integer, got '2,3'"),
    (number_list, "20,,200", "expected comma-separated numbers, got '20,,200'"),
    (number_list, "20,-1", "values must be positive and finite, got '20,-1'"),
    (lambda t: number_list(t, float), "0.1,nan", "values must be positive and finite, got '0.1,nan'"),
    (lambda t: number_list(t, float), "inf", "values must be positive and finite, got 'inf'"),
])
def test_bad_numbers_are_argparse_errors_that_name_the_text(parse, text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        parse(text)


def test_good_numbers() -> None:
    assert parse_number("0.25", float) == 0.25 and non_negative_int("0") == 0 and positive_int("7") == 7
    assert number_list("0.1,1", float) == (0.1, 1.0) and number_list("20,200") == (20, 200)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demo")
    p.add_argument("--n", type=positive_int, default=1)
    p.add_argument("--fail", choices=("no", "value", "os", "runtime", "type"), default="no")
    return p


def _run(args: argparse.Namespace) -> dict:
    errors = {"value": ValueError("bad.xml: <name> missing"), "os": FileNotFoundError("no such root: /nowhere"),
              "runtime": RuntimeError("CUDA not available: --device cuda"), "type": TypeError("a bug, not bad input")}
    if args.fail in errors:
        raise errors[args.fail]
    return {"n": args.n}


def _report(record: dict, args: argparse.Namespace) -> str:
    return f"n = {record['n']} of {args.n}"


def test_command_main_prints_the_report_or_logs_one_line_and_returns_2(capsys: pytest.CaptureFixture,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    assert command_main(_parser(), ["--n", "3"], _run, _report) == 0
    assert capsys.readouterr().out == "n = 3 of 3\n"
    with caplog.at_level(logging.ERROR):
        assert command_main(_parser(), ["--fail", "value"], _run, _report) == 2
        assert command_main(_parser(), ["--fail", "os"], _run, _report) == 2
        assert command_main(_parser(), ["--fail", "runtime"], _run, _report) == 2  # devices, checkpoints
    assert "bad.xml: <name> missing" in caplog.text and "no such root: /nowhere" in caplog.text
    assert "CUDA not available" in caplog.text
    assert capsys.readouterr().out == ""  # no report after a failure
    with pytest.raises(TypeError, match="a bug"):  # not a listed input error: not hidden behind an exit code
        command_main(_parser(), ["--fail", "type"], _run, _report)
    with pytest.raises(FileNotFoundError):  # the caller chooses which errors are bad input
        command_main(_parser(), ["--fail", "os"], _run, _report, errors=(ValueError,))


def test_command_main_usage_problems_exit_2_before_running(capsys: pytest.CaptureFixture) -> None:
    ran = []
    with pytest.raises(SystemExit) as exc:
        command_main(_parser(), ["--n", "2"], lambda args: ran.append(args), _report,
                     check=lambda args: "--n 2 is not allowed here" if args.n == 2 else None)
    assert exc.value.code == 2 and ran == [] and "--n 2 is not allowed here" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        command_main(_parser(), ["--n", "0"], _run, _report)
    assert exc.value.code == 2 and "must be >= 1, got 0" in capsys.readouterr().err


def test_the_commands_reject_bad_numbers_and_usage_before_any_work(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """probe: --low-shot with another probe, --batch-size 0; retrieve and inpaint: --batch-size 0; evaluate: a
    --iou that is not a number. Each is a usage error (exit 2) that names the problem."""
    from pretext.inpaint import main as inpaint_main
    from transfer.evaluate import main as evaluate_main
    from transfer.probe import main as probe_main
    from transfer.retrieve import main as retrieve_main

    common = ["--encoder", str(tmp_path / "run"), "--out", str(tmp_path / "out")]
    cases = [
        (probe_main, ["linear", *common, "--train", str(tmp_path), "--test", str(tmp_path), "--low-shot", "1,2"],
         "--low-shot applies to the svm probe only"),
        (probe_main, ["knn", *common, "--train", str(tmp_path), "--test", str(tmp_path), "--batch-size", "0"],
         "argument --batch-size: must be >= 1, got 0"),
        (retrieve_main, [*common, "--database", str(tmp_path), "--queries", str(tmp_path), "--batch-size", "0"],
         "argument --batch-size: must be >= 1, got 0"),
        (inpaint_main, ["--checkpoint", str(tmp_path), "--images", str(tmp_path), "--out", str(tmp_path / "o"),
                        "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
        (evaluate_main, ["detection", "--voc-root", str(tmp_path), "--results", str(tmp_path), "--out",
                         str(tmp_path / "o"), "--iou", "half"], "argument --iou: expected a number, got 'half'"),
    ]
    for main, argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()
