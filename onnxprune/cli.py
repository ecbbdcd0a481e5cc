"""The `onnxprune` command: parse, call the library, print. Nothing here that a library user would need.

Exit codes: 0 ok; 2 bad usage or bad input (one line on stderr); 1 internal error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from onnxprune.graph.load import load, parse_input_shapes, read_proto
from onnxprune.graph.model import Model
from onnxprune.graph.save import data_path, save
from onnxprune.errors import OnnxPruneError, OptionError

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2


def _load(args: argparse.Namespace) -> Model:
    return load(args.model, parse_input_shapes(args.input_shape))


_INPUT_OPTIONS = ("model", "input", "data", "val", "sens", "spec", "key_file", "config")


def _check_output(args: argparse.Namespace, *outputs: str | Path | None) -> None:
    """Refuse outputs that are an input or each other (nothing the user had may be lost); clean up."""
    from onnxprune.atomic import remove_stale_temps
    from onnxprune.outputs import check_outputs

    check_outputs([getattr(args, name, None) for name in _INPUT_OPTIONS], outputs)
    for folder in {Path(out).parent for out in outputs if out}:
        remove_stale_temps(folder)  # what killed runs left (decrypt's plaintext), even if this run fails


def cmd_inspect(args: argparse.Namespace) -> int:
    """Show per-layer MACs and params, the channel groups, and why a group cannot be pruned."""
    from onnxprune.pruning.inspect import format_report, inspect_model

    report = inspect_model(_load(args), attention=args.attention)
    print(json.dumps(report.to_dict(), indent=1) if args.json else format_report(report))
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    """Remove channels: --ratio R removes R of the MACs (uniformly, or guided by --sens); --spec sets
    per-group channel ratios. Slim mode (default) removes channels; sparse mode zeroes them.

    With --data CALIB.npz (a few hundred unlabeled samples) the layers that read removed channels are
    re-solved by least squares to compute what the unpruned model computes (no training), and the
    channels removed are those the re-solved layers can best make up for (--criterion greedy)."""
    from onnxprune.pruning.plan import read_spec
    from onnxprune.progress import ProgressBar
    from onnxprune.pruning.prune import PruneOptions, prune
    from onnxprune.graph.runtime import parse_providers

    _check_output(args, args.output, data_path(args.output), args.plan_out)
    options = PruneOptions(
        ratio=args.ratio, spec=read_spec(args.spec) if args.spec else None,
        sensitivity=_read_sensitivity(args.sens) if args.sens else None, criterion=args.criterion,
        round_to=args.round_to, exclude=args.exclude or [], mode=args.mode, verify=not args.no_verify,
        attention=args.attention, providers=parse_providers(args.providers), data=args.data,
        reconstruct=args.reconstruct, allocation=args.allocation,
    )
    options.check()
    with ProgressBar(sys.stderr, label="reconstruct", unit="layers") as bar:
        result = prune(_load(args), options, progress=bar.update)
    _free_memory()  # the loaded model (a reference cycle) goes before the output is serialized
    save(result.model, args.output)
    if args.plan_out:
        from onnxprune.atomic import write_text

        write_text(args.plan_out, result.plan.to_json())
    _print_prune_summary(result, args.output, result.reconstruction)
    return EXIT_OK


def _read_sensitivity(path: str):
    from onnxprune.analysis.table import SensitivityTable

    return SensitivityTable.load(path)


def _print_prune_summary(result, output: str, reconstruction=None) -> None:
    """What `prune` (or `transform`: no reconstruction) did, on stderr."""
    from onnxprune.pruning.inspect import human

    plan = result.plan
    rows = [("MACs", plan.macs_before, plan.macs_after), ("params", plan.params_before, plan.params_after)]
    print(f"{'':8} {'before':>10} {'after':>10} {'ratio':>7}", file=sys.stderr)
    for name, before, after in rows:
        print(f"{name:8} {human(before):>10} {human(after):>10} {after / max(before, 1):>7.3f}", file=sys.stderr)
    print(f"pruned {len(plan.groups)} groups, {plan.macs_ratio:.1%} of MACs removed -> {output}", file=sys.stderr)
    if reconstruction is not None:
        print(reconstruction.summary(), file=sys.stderr)
    if result.difference is not None:
        print(f"verified: slim equals sparse (max relative difference {result.difference:.1e})", file=sys.stderr)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)


def cmd_transform(args: argparse.Namespace) -> int:
    """Turn a sparse model (channels zeroed, e.g. after fine-tuning with masks) into a dense one by
    removing every all-zero channel; no plan needed. --encrypt writes it AES-256-GCM encrypted."""
    from onnxprune.pruning.transform import transform

    _check_output(args, args.output, data_path(args.output))
    key = _key_source(args, required="--encrypt") if args.encrypt else None
    result = transform(_load(args), attention=args.attention)
    _free_memory()
    if key is None:
        save(result.model, args.output)
    else:
        from onnxprune.atomic import write_bytes
        from onnxprune.secure import encrypt_bytes

        write_bytes(args.output, encrypt_bytes(result.model.SerializeToString(), key))
    _print_prune_summary(result, args.output)
    return EXIT_OK


# --- keys, encryption, running ---------------------------------------------------------------------


def _key_source(args: argparse.Namespace, required: str = ""):
    """The key from --key-file, --key-env or --passphrase-env (at most one); None when none is given,
    unless `required` names what needs it."""
    from onnxprune.secure import KeyOrigin

    origin = KeyOrigin(getattr(args, "key_file", None) or None, getattr(args, "key_env", None) or None,
                       getattr(args, "passphrase_env", None) or None)
    if required and not origin.given:
        raise OnnxPruneError(f"{required} needs --key-file, --key-env or --passphrase-env")
    return origin.source()


def _add_key_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key-file", help="file with the 32-byte key (from `onnxprune keygen`)")
    p.add_argument("--key-env", metavar="VAR", help="environment variable holding the key as hex or base64")
    p.add_argument("--passphrase-env", metavar="VAR", help="environment variable holding a passphrase (scrypt)")


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write a new random 256-bit key (hex text, file mode 0600); never overwrites an existing key."""
    from onnxprune.secure import write_key_file

    write_key_file(args.output)
    print(f"wrote a new key to {args.output}", file=sys.stderr)
    return EXIT_OK


def cmd_encrypt(args: argparse.Namespace) -> int:
    """Encrypt an ONNX model (and its external data) with AES-256-GCM into one file."""
    from onnxprune.secure import encrypt_file

    _check_output(args, args.output)
    key = _key_source(args, required="encrypt")
    encrypt_file(args.model, args.output, key)  # checks the file's structure without loading its weights
    print(f"encrypted {args.model} -> {args.output}", file=sys.stderr)
    return EXIT_OK


def cmd_decrypt(args: argparse.Namespace) -> int:
    """Decrypt an encrypted model back to a plain ONNX file (external data is written beside it)."""
    from onnxprune.secure import decrypt_file

    _check_output(args, args.output)
    decrypt_file(args.model, args.output, _key_source(args, required="decrypt"))
    print(f"decrypted {args.model} -> {args.output}", file=sys.stderr)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Run a model (plain, or encrypted with a key: decrypted in memory only) on a data file or on a
    random batch, and write its outputs to an .npz (one array per output)."""
    from onnxprune.data import load_data, random_feeds, session_specs, write_npz
    from onnxprune.graph.runtime import parse_providers
    from onnxprune.secure import KeySource, ensure_plain_model, is_encrypted, load_session

    _check_output(args, args.output)
    key = _key_source(args)
    if key is None:
        ensure_plain_model(args.model, "pass --key-file, --key-env or --passphrase-env")
    elif not is_encrypted(args.model):
        raise OnnxPruneError(f"{args.model}: not an encrypted model, but a key was given")
    providers = parse_providers(args.providers)
    if key is None:
        read_proto(args.model)  # a clear message for truncated or non-ONNX files
        sess = load_session(args.model, providers=providers)
    else:
        secret = KeySource.raw_key(key) if key.passphrase is None else None
        sess = load_session(args.model, key=secret, passphrase=key.passphrase, providers=providers)
    if args.data:
        feeds = load_data(args.data, session_specs(sess.get_inputs()), cast=True).inputs
    else:
        shapes = parse_input_shapes(args.input_shape)
        for inp in sess.get_inputs():
            if inp.name not in shapes:
                dims = [d if isinstance(d, int) and d > 0 else None for d in inp.shape]
                if any(d is None for d in dims[1:]):
                    raise OnnxPruneError(f"input {inp.name!r} has dynamic dims {inp.shape}; pass --data or --input-shape")
                shapes[inp.name] = tuple([1] + dims[1:])
        feeds = random_feeds(session_specs(sess.get_inputs(), shapes), batch=args.batch)
    outputs = sess.run(None, feeds)
    names = [o.name for o in sess.get_outputs()]
    for name, value in zip(names, outputs):
        print(f"{name}: shape {list(value.shape)}, dtype {value.dtype}", file=sys.stderr)
    if args.output:
        write_npz(args.output, dict(zip(names, outputs)))
    return EXIT_OK


# --- analyze (sensitivity) -------------------------------------------------------------------------


def cmd_analyze(args: argparse.Namespace) -> int:
    """Measure how the metric drops when each channel group is pruned at each ratio (sensitivity).

    For every prunable group and ratio, zero that fraction of the group's least important channels and
    evaluate with onnxruntime: top-1 when --data has `labels`, else the label-free fidelity to the
    unpruned model's outputs, or your own --eval function. Finished entries are cached as they come, so
    the same command resumes after an interruption. Use the table with `prune --sens SENS.json`."""
    import importlib.util

    from onnxprune.analysis.analyze import AnalyzeOptions, analyze, default_cache_dir
    from onnxprune.progress import ProgressBar
    from onnxprune.graph.runtime import parse_providers
    from onnxprune.analysis.table import (
        DEFAULT_RATIOS,
        format_table,
        parse_ratios,
        plot_table,
        table_paths,
    )

    _check_output(args, *(table_paths(args.output) if args.output else []), args.plot)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise OnnxPruneError("--plot needs matplotlib: pip install 'onnxprune[plots]'")
    options = AnalyzeOptions(
        data=args.data, eval=args.eval, ratios=parse_ratios(args.ratios) if args.ratios is not None else list(DEFAULT_RATIOS),
        criterion=args.criterion, workers=args.workers, ray=args.ray, cache_dir=args.cache or default_cache_dir(),
        force=args.force, val=args.val, providers=parse_providers(args.providers), attention=args.attention,
        round_to=args.round_to, reconstruct=args.reconstruct,
    )
    options.check()
    model = _load(args)

    def warn(text: str) -> None:
        print(f"\nwarning: {text}" if bar.drawn else f"warning: {text}", file=sys.stderr)

    with ProgressBar(sys.stderr) as bar:
        result = analyze(model, options, progress=bar.update, warn=warn)
    print(format_table(result.table))
    if args.output:
        written = result.table.save(args.output)
        print(f"wrote {' and '.join(map(str, written))}", file=sys.stderr)
    if args.plot:
        plot_table(result.table, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    print(f"{result.evaluated} entries evaluated, {result.cached} from the cache ({result.cache_path})",
          file=sys.stderr)
    return EXIT_OK


def _parser_analyze(p: argparse.ArgumentParser) -> None:
    _add_model(p)
    _add_attention(p)
    p.add_argument("--data", metavar="D.npz", help="analysis data: arrays named after the model's inputs, "
                   "optional integer `labels` for top-1 (default: random inputs, fidelity)")
    p.add_argument("--eval", metavar="MOD:FUNC", help="your metric: package.module:function(run, data) -> float, "
                   "higher is better")
    p.add_argument("--ratios", metavar="R,R,...", help="fractions of each group's channels to zero "
                   "(default 0.1,0.2,...,0.9)")
    p.add_argument("--criterion", help="channel importance: l1, l2, bn; with --data also act or greedy "
                   "(default: greedy with --reconstruct, else l1; choose as you will prune)")
    p.add_argument("--reconstruct", action="store_true", help="measure each entry with the layers reading "
                   "the group re-solved from --data, as `prune --data` will: the table to allocate by when "
                   "you prune with reconstruction")
    p.add_argument("--round-to", type=int, metavar="N", help="keep channel counts a multiple of N, as prune "
                   "--round-to N will (default: as prune does by default)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=1, metavar="N", help="run entries in N local processes")
    where.add_argument("--ray", metavar="ADDRESS", help="run entries as Ray tasks (auto, ray://host:port, local)")
    p.add_argument("--cache", metavar="DIR", help="resumable cache directory (default ~/.cache/onnxprune/analyze)")
    p.add_argument("--force", action="store_true", help="ignore cached entries and start over")
    p.add_argument("--val", metavar="D.npz", help="the full validation set: warns when --data is less than half")
    p.add_argument("-o", "--output", metavar="SENS.json", help="write the table as JSON, and as CSV beside it")
    p.add_argument("--plot", metavar="PNG", help="draw metric-vs-ratio curves per group")
    p.add_argument("--providers", help="onnxruntime providers, e.g. CUDA,CPU (default CPU)")


# --- iterate (prune + fine-tune loop) ---------------------------------------------------------------


def cmd_iterate(args: argparse.Namespace) -> int:
    """Run the iterative prune -> fine-tune loop from a TOML config; resumes an unfinished work dir.

    Each round prunes the last fine-tuned model to the schedule's next MACs ratio, fine-tunes it through
    the config's adapter (a command, or a Python factory such as one returning a TorchAdapter) with every
    trial's settings, and keeps the best trial if it is within the tolerance; otherwise it retries with a
    smaller step. The end writes the dense model (encrypted too, with [encrypt]) and prints the rounds;
    WORKDIR/report.json holds them as JSON. Run the same command again to resume after any interruption."""
    from onnxprune.loop.config import build_adapter, load_config
    from onnxprune.loop.iterate import format_table, run

    config = load_config(args.config)
    result = run(config, build_adapter(config.adapter), args.workdir)
    print(format_table(result))
    return EXIT_OK


def _parser_iterate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="the run's TOML config")
    p.add_argument("--workdir", required=True, help="where rounds are checkpointed (resumed if unfinished)")


# --- end of per-command sections --------------------------------------------------------------------


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="an ONNX model file")
    p.add_argument("--input-shape", action="append", metavar="NAME:D0,D1,...",
                   help="fix a dynamic input shape, e.g. images:1,3,640,640 (repeatable)")


def _add_attention(p: argparse.ArgumentParser) -> None:
    p.add_argument("--attention", default="dims", choices=("dims", "heads"),
                   help="MatMul attention loses head_dim positions in every head (dims, default) or whole heads")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnxprune", description="Structured channel pruning of ONNX models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn) -> argparse.ArgumentParser:
        doc = (fn.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.split("\n\n")[0].replace("\n", " "), description=doc)
        p.set_defaults(func=fn)
        return p

    p = command("inspect", cmd_inspect)
    _add_model(p)
    _add_attention(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = command("prune", cmd_prune)
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
                   help="per-group ratios without --sens: one channel fraction for all (uniform, the default), or "
                        "by what reconstruction cannot recover (needs --data)")
    p.add_argument("--round-to", type=int, default=None, metavar="N",
                   help="keep channel counts a multiple of N (default: 16 or 8 for wide layers, finer for narrow "
                        "ones; 1 for exact fractions)")
    p.add_argument("--exclude", nargs="+", metavar="NODE", help="node names (or patterns) to keep whole")
    p.add_argument("--mode", default="slim", choices=("slim", "sparse"), help="remove (slim) or zero (sparse)")
    p.add_argument("-o", "--output", required=True, help="where to write the pruned model")
    p.add_argument("--plan-out", help="write the plan (channels removed per group) as JSON")
    p.add_argument("--no-verify", action="store_true", help="skip the sparse-vs-slim output check")
    p.add_argument("--providers", help="onnxruntime providers, e.g. CUDA,CPU (default CPU)")

    p = command("transform", cmd_transform)
    _add_model(p)
    _add_attention(p)
    p.add_argument("-o", "--output", required=True, help="where to write the dense model")
    p.add_argument("--encrypt", action="store_true", help="write the dense model encrypted (needs a key)")
    _add_key_options(p)

    p = command("keygen", cmd_keygen)
    p.add_argument("-o", "--output", required=True, help="where to write the key (refuses to overwrite)")

    for name, fn, what in (("encrypt", cmd_encrypt, "encrypted"), ("decrypt", cmd_decrypt, "plain ONNX")):
        p = command(name, fn)
        p.add_argument("model", help="the model to " + name)
        p.add_argument("-o", "--output", required=True, help=f"where to write the {what} model")
        _add_key_options(p)

    p = command("run", cmd_run)
    _add_model(p)
    _add_key_options(p)
    p.add_argument("--data", help=".npz with one array per model input")
    p.add_argument("--batch", type=int, default=1, help="batch size of the random input when no --data")
    p.add_argument("-o", "--output", help="write the outputs to this .npz")
    p.add_argument("--providers", help="onnxruntime providers, e.g. CUDA,CPU (default CPU)")

    _parser_analyze(command("analyze", cmd_analyze))
    _parser_iterate(command("iterate", cmd_iterate))
    return parser


def _free_memory() -> None:
    """Collect the IR's reference cycles now and hand the memory back, before the next big step."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _return_freed_memory() -> None:
    """Let glibc give big freed blocks back to the OS (weights are freed step by step; without this a
    pruning run holds on to the peak of every step). Only the command does this, never an import."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: big blocks are mmapped, and unmapped when freed
        libc.mallopt(-1, 1 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings from the library, one line each, in the command's own voice."""
    print(f"onnxprune: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    _return_freed_memory()
    parser = build_parser()
    args = parser.parse_args(argv)
    import warnings

    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _dispatch(args)


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
    except Exception as exc:
        if args.debug:
            raise
        text = str(exc).strip().splitlines()
        print(f"onnxprune: internal error: {type(exc).__name__}: {text[0] if text else ''} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
