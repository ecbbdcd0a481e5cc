"""The `onnxprune` command: the argument parser, and errors mapped to exit codes. What each verb does
is in `commands`.

Exit codes: 0 ok; 2 bad usage or bad input (one line on stderr); 1 internal error.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from onnxprune import __version__
from onnxprune.commands import (
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_USAGE,
    cmd_analyze,
    cmd_decrypt,
    cmd_encrypt,
    cmd_inspect,
    cmd_iterate,
    cmd_keygen,
    cmd_prune,
    cmd_run,
    cmd_transform,
)
from onnxprune.errors import OnnxPruneError, OptionError


def _add_key_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key-file", help="file with the 32-byte key (from `onnxprune keygen`)")
    p.add_argument("--key-env", metavar="VAR", help="environment variable holding the key as hex or base64")
    p.add_argument("--passphrase-env", metavar="VAR", help="environment variable holding a passphrase (scrypt)")


def _parser_analyze(p: argparse.ArgumentParser) -> None:
    _add_model(p)
    _add_attention(p)
    p.add_argument("--data", metavar="D.npz", help="analysis data: arrays named after the model's inputs, "
                   "optional integer `labels` for top-1 (default: random inputs, fidelity)")
    p.add_argument("--eval", metavar="MOD:FUNC", help="your metric: package.module:function(run, data) -> float, "
                   "higher is better")
    p.add_argument("--metric", choices=("fidelity", "agreement"), help="label-free metric (default: top-1 "
                   "with labels, else fidelity): fidelity, the outputs' distance to the unpruned model's; "
                   "agreement, the share of its arg-max predictions kept (classifiers, text recognizers)")
    p.add_argument("--ratios", metavar="R,R,...", help="fractions of each group's channels to zero "
                   "(default 0.1,0.2,...,0.9)")
    p.add_argument("--criterion", help="channel importance: l1, l2, bn; with --data also act or greedy "
                   "(default: greedy with --reconstruct, else l1; choose as you will prune)")
    p.add_argument("--reconstruct", action="store_true", help="measure each entry with the layers reading "
                   "the group re-solved from --data, as `prune --data` will: the table to allocate by when "
                   "you prune with reconstruction")
    p.add_argument("--round-to", type=int, metavar="N", help="keep channel counts a multiple of N, as prune "
                   "--round-to N will (default: as prune does by default)")
    p.add_argument("--exact", action="store_true", help="measure every ratio of every group on every sample "
                   "(default: adaptive, each row only as far as `prune --sens` can use it, each entry on as few "
                   "samples as its metric needs)")
    p.add_argument("--cover", type=float, metavar="F", help="adaptive: make the plans up to this share of MACs "
                   "removed the full table's (default 0.6)")
    p.add_argument("--plans", metavar="F[,F...]", help="adaptive: the shares of MACs you will prune at; the plans "
                   "there become the full table's (the cells that decide them are measured on every sample; "
                   "default 0.5; none: no refinement)")
    p.add_argument("--samples", type=int, metavar="N", help="analyze on N samples: the first N of --data, or N "
                   "random inputs without it (default 64)")
    p.add_argument("--budget", type=float, metavar="MINUTES", help="stop measuring after this long and say what "
                   "was left out (plans go no further than the last measured ratio of a row)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=1, metavar="N", help="run entries in N local processes")
    where.add_argument("--ray", metavar="ADDRESS", help="run entries as Ray tasks (auto, ray://host:port, local)")
    p.add_argument("--cache", metavar="DIR", help="resumable cache directory (default ~/.cache/onnxprune/analyze)")
    p.add_argument("--force", action="store_true", help="ignore cached entries and start over")
    p.add_argument("--val", metavar="D.npz", help="the full validation set: warns when --data is less than half")
    p.add_argument("-o", "--output", metavar="SENS.json", help="write the table as JSON, and as CSV beside it")
    p.add_argument("--plot", metavar="PNG", help="draw metric-vs-ratio curves per group")
    p.add_argument("--providers", help="onnxruntime providers, e.g. CUDA,CPU (default CPU)")


def _parser_iterate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="the run's TOML config")
    p.add_argument("--workdir", required=True, help="where rounds are checkpointed (resumed if unfinished)")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="an ONNX model file")
    p.add_argument("--input-shape", action="append", metavar="NAME:D0,D1,...",
                   help="fix a dynamic input shape, e.g. images:1,3,640,640 (repeatable)")


def _add_attention(p: argparse.ArgumentParser) -> None:
    p.add_argument("--attention", default="dims", choices=("dims", "heads"),
                   help="MatMul attention loses head_dim positions in every head (dims, default) or whole heads")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)  # options every verb takes too, before or after it
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks of internal errors and onnxruntime's warnings")
    parser = _Parser(prog="onnxprune", description="Structured channel pruning of ONNX models.", parents=[common])
    parser.add_argument("--version", action="version", version=f"onnxprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    verbs = (("inspect", cmd_inspect, _parser_inspect), ("prune", cmd_prune, _parser_prune),
             ("transform", cmd_transform, _parser_transform), ("keygen", cmd_keygen, _parser_keygen),
             ("encrypt", cmd_encrypt, _parser_encrypt), ("decrypt", cmd_decrypt, _parser_decrypt),
             ("run", cmd_run, _parser_run), ("analyze", cmd_analyze, _parser_analyze),
             ("iterate", cmd_iterate, _parser_iterate))
    for name, fn, arguments in verbs:
        doc = (fn.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.split("\n\n")[0].replace("\n", " "), description=doc, parents=[common])
        p.set_defaults(func=fn)
        arguments(p)
    return parser


def _parser_inspect(p: argparse.ArgumentParser) -> None:
    _add_model(p)
    _add_attention(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _parser_prune(p: argparse.ArgumentParser) -> None:
    _add_model(p)
    _add_attention(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=float, help="fraction of MACs to remove, in (0, 1)")
    how.add_argument("--spec", help="JSON mapping group id -> fraction of its channels to remove")
    p.add_argument("--sens", help="sensitivity table from `onnxprune analyze` to allocate --ratio by")
    p.add_argument("--criterion", help="channel importance: l1, l2, bn; with --data also act (activation-weighted) "
                   "and greedy (what reconstruction cannot make up for); default greedy with --data "
                   "(act with --no-reconstruct), l1 without")
    p.add_argument("--data", metavar="CALIB.npz", help="calibration data: arrays named after the model's inputs, "
                   "samples on axis 0, no labels needed; turns on reconstruction")
    p.add_argument("--reconstruct", action=argparse.BooleanOptionalAction, default=None,
                   help="re-solve the layers that read removed channels on --data (default: on with --data)")
    p.add_argument("--allocation", choices=("uniform", "reconstruction"),
                   help="per-group ratios without --sens: by the error reconstruction cannot recover per MAC "
                        "removed, from the greedy pass (reconstruction: the default with --data and --criterion "
                        "greedy), or one channel fraction for all (uniform: the default otherwise)")
    p.add_argument("--round-to", type=int, default=None, metavar="N",
                   help="keep channel counts a multiple of N (default: 16 or 8 for wide layers, finer for narrow "
                        "ones; 1 for exact fractions)")
    p.add_argument("--exclude", action="append", metavar="NODE", help="a node name (or fnmatch pattern) whose "
                   "channels are kept whole; repeat for more")
    p.add_argument("--mode", default="slim", choices=("slim", "sparse"), help="remove (slim) or zero (sparse)")
    p.add_argument("--norms", default="exact", choices=("exact", "approximate"),
                   help="LayerNorm/RMSNorm/means over pruned channels: keep the original count (exact, default: "
                        "slim equals sparse) or normalize over the kept channels (approximate: a fused LayerNorm, "
                        "faster, but the slim model differs from the sparse one)")
    p.add_argument("-o", "--output", required=True, help="where to write the pruned model")
    p.add_argument("--plan-out", help="write the plan (channels removed per group) as JSON")
    p.add_argument("--plot", metavar="PNG", help="draw each layer's output channels before and after (matplotlib)")
    p.add_argument("--no-verify", action="store_true", help="skip the sparse-vs-slim output check")
    p.add_argument("--providers", help="onnxruntime providers, e.g. CUDA,CPU (default CPU)")


def _parser_transform(p: argparse.ArgumentParser) -> None:
    _add_model(p)
    _add_attention(p)
    p.add_argument("-o", "--output", required=True, help="where to write the dense model")
    p.add_argument("--encrypt", action="store_true", help="write the dense model encrypted (needs a key)")
    _add_key_options(p)


def _parser_keygen(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, help="where to write the key (refuses to overwrite)")


def _parser_encrypt(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the model to encrypt")
    p.add_argument("-o", "--output", required=True, help="where to write the encrypted model")
    _add_key_options(p)


def _parser_decrypt(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the model to decrypt")
    p.add_argument("-o", "--output", required=True, help="where to write the plain ONNX model")
    _add_key_options(p)


def _parser_run(p: argparse.ArgumentParser) -> None:
    _add_model(p)
    _add_key_options(p)
    p.add_argument("--data", help=".npz with one array per model input")
    p.add_argument("--batch", type=int, default=1, help="batch size of the random input when no --data")
    p.add_argument("-o", "--output", help="write the outputs to this .npz")
    p.add_argument("--providers", help="onnxruntime providers, e.g. CUDA,CPU (default CPU)")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings from the library, one line each, in the command's own voice."""
    print(f"onnxprune: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version (0), or a usage error already said in one line (2)
        return int(stop.code or 0)
    args.debug = getattr(args, "debug", False)  # before or after the verb; absent when given in neither
    if not args.debug:
        _quiet_onnxruntime()
    import warnings

    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _dispatch(args)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), as every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"onnxprune: error: {message} (see `{self.prog} --help`)\n")


def _quiet_onnxruntime() -> None:
    """onnxruntime logs warnings in red for things that are not the user's concern (initializers listed
    as inputs, unused constants); keep its log to errors unless --debug."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)


def _closed_stdout() -> int:
    """The reader of our output went away (`onnxprune inspect --json | head`): stop quietly. Python would
    report the broken pipe again when it flushes stdout at exit, so point stdout at /dev/null first."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_OK


_FLAGS = {"sensitivity": "--sens", "data": "--data CALIB.npz", "cache_dir": "--cache", "input_shapes": "--input-shape"}


def _flag(option: str) -> str:
    """The command-line flag of a library option (`round_to` -> `--round-to`), for the library's
    `OptionError`s."""
    return _FLAGS.get(option, "--" + option.replace("_", "-"))


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except OptionError as exc:
        print(f"onnxprune: error: {exc.say(_flag)}", file=sys.stderr)
        return EXIT_USAGE
    except OnnxPruneError as exc:
        print(f"onnxprune: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("onnxprune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _closed_stdout()
    except Exception as exc:
        if args.debug:
            raise
        text = str(exc).strip().splitlines()
        print(f"onnxprune: internal error: {type(exc).__name__}: {text[0] if text else ''} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
