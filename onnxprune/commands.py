"""What each `onnxprune` verb does: read the arguments, call the library, print. `cli` builds the parser
and maps errors to exit codes; nothing here that a library user would need."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from onnxprune.errors import OnnxPruneError, OptionError
from onnxprune.graph.load import load, parse_input_shapes, read_proto
from onnxprune.graph.model import Model
from onnxprune.graph.save import data_path, save

if TYPE_CHECKING:
    from onnxprune.pruning.inspect import LayerChannels
    from onnxprune.pruning.plan import Plan

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2


def _load(args: argparse.Namespace) -> Model:
    return load(args.model, parse_input_shapes(args.input_shape))


_INPUT_OPTIONS = ("model", "input", "data", "val", "sens", "spec", "key_file", "config")


def _check_output(args: argparse.Namespace, *outputs: str | Path | None) -> None:
    """Refuse outputs that are an input or each other (nothing the user had may be lost); clean up."""
    from onnxprune.atomic import remove_stale_temps
    from onnxprune.outputs import check_outputs

    check_outputs([getattr(args, name, None) for name in _INPUT_OPTIONS], outputs)
    for out in (Path(o) for o in outputs if o):
        if not out.parent.exists():  # a typo in a path is not a request to create folders
            raise OnnxPruneError(f"{out}: the folder {out.parent} does not exist; create it first")
    for folder in {Path(out).parent for out in outputs if out}:
        remove_stale_temps(folder)  # what killed runs left (decrypt's plaintext), even if this run fails


def cmd_inspect(args: argparse.Namespace) -> int:
    """Show per-layer MACs and params, the channel groups, and why a group cannot be pruned."""
    from onnxprune.pruning.inspect import format_report, inspect_model
    from onnxprune.tables import terminal_width

    report = inspect_model(_load(args), attention=args.attention)
    print(json.dumps(report.to_dict(), indent=1) if args.json else format_report(report, terminal_width(sys.stdout)))
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    """Remove channels: --ratio R removes R of the MACs (uniformly, or guided by --sens); --spec sets
    per-group channel ratios. Slim mode (default) removes channels; sparse mode zeroes them.

    With --data CALIB.npz (a few hundred unlabeled samples) the layers that read removed channels are
    re-solved by least squares to compute what the unpruned model computes (no training), and the
    channels removed are those the re-solved layers can best make up for (--criterion greedy)."""
    from onnxprune.graph.runtime import parse_providers
    from onnxprune.progress import ProgressBar
    from onnxprune.pruning.channels import find_groups
    from onnxprune.pruning.inspect import channels_after, layer_axes
    from onnxprune.pruning.plan import read_spec
    from onnxprune.pruning.prune import PruneOptions, prune

    _check_output(args, args.output, data_path(args.output), args.plan_out, args.plot)
    if args.plot:
        from onnxprune.plots import require_matplotlib

        require_matplotlib()
    options = PruneOptions(
        ratio=args.ratio, spec=read_spec(args.spec) if args.spec else None,
        sensitivity=_read_sensitivity(args.sens) if args.sens else None, criterion=args.criterion,
        round_to=args.round_to, exclude=args.exclude or [], mode=args.mode, verify=not args.no_verify,
        attention=args.attention, providers=parse_providers(args.providers), data=args.data,
        reconstruct=args.reconstruct, allocation=args.allocation, norms=args.norms,
    )
    options.check()
    model = _load(args)
    groups = find_groups(model, options.attention)
    layers = layer_axes(model) if args.plot else None  # read now: the model is gone before the output is written
    with ProgressBar(sys.stderr, label="prune", unit="layers") as bar:
        result = prune(model, options, progress=bar.update, groups=groups)
    del model
    _free_memory()  # the loaded model (a reference cycle) goes before the output is serialized
    save(result.model, args.output)
    if args.plan_out:
        from onnxprune.atomic import write_text

        write_text(args.plan_out, result.plan.to_json())
    _print_prune_summary(result, args.output, result.reconstruction)
    if args.plot:
        _plot_channels(channels_after(layers, groups, result.plan), result.plan, args.plot)
    return EXIT_OK


def _plot_channels(layers: list[LayerChannels], plan: Plan, path: str) -> None:
    """`prune --plot`: the layers' output channels before and after, with what the plan removed."""
    from onnxprune.plots import plot_channels

    pruned = sum(layer.after < layer.before for layer in layers)
    plot_channels(layers, path, f"Output channels per layer: {pruned} of {len(layers)} layers pruned, "
                                f"{plan.macs_ratio:.1%} of MACs removed")
    print(f"wrote {path}", file=sys.stderr)


def _read_sensitivity(path: str):
    from onnxprune.analysis.table import SensitivityTable

    return SensitivityTable.load(path)


def _print_prune_summary(result, output: str, reconstruction=None) -> None:
    """What `prune` (or `transform`: no reconstruction) did, on stderr."""
    from onnxprune.pruning.inspect import human
    from onnxprune.tables import Column, render, terminal_width

    plan = result.plan
    rows = [("MACs", plan.macs_before, plan.macs_after), ("params", plan.params_before, plan.params_after)]
    cells = [[name, human(before), human(after), f"{after / max(before, 1):.3f}"] for name, before, after in rows]
    print(render([Column("", left=True), Column("before"), Column("after"), Column("ratio")], cells,
                 terminal_width(sys.stderr)), file=sys.stderr)
    print(f"pruned {len(plan.groups)} groups, {plan.macs_ratio:.1%} of MACs removed -> {output}", file=sys.stderr)
    if reconstruction is not None:
        print(reconstruction.summary(), file=sys.stderr)
    approximation = getattr(result, "approximation", None)
    if result.difference is not None and approximation is None:
        print(f"verified: slim equals sparse (max relative difference {result.difference:.1e})", file=sys.stderr)
    elif result.difference is not None:
        print(f"verified: the exact slim model equals sparse (max relative difference {result.difference:.1e}); "
              f"with --norms approximate the written model differs from sparse by {approximation:.1e} "
              "(max relative), by choice", file=sys.stderr)
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
    if not result.plan.groups:
        print("note: no channel of this model is all zero, so nothing was removed: transform takes a sparse "
              "model (`prune --mode sparse`, or a model fine-tuned with its masks)", file=sys.stderr)
    return EXIT_OK


def _key_source(args: argparse.Namespace, required: str = ""):
    """The key from --key-file, --key-env or --passphrase-env (at most one); None when none is given,
    unless `required` names what needs it."""
    from onnxprune.secure import KeyOrigin

    origin = KeyOrigin(getattr(args, "key_file", None) or None, getattr(args, "key_env", None) or None,
                       getattr(args, "passphrase_env", None) or None)
    if required and not origin.given:
        raise OnnxPruneError(f"{required} needs --key-file, --key-env or --passphrase-env")
    return origin.source()


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


def _shares(text: str | None) -> list[float] | None:
    """`--plans 0.3,0.5` -> [0.3, 0.5]; `none` -> [] (no refinement); absent -> None (the default)."""
    if text is None:
        return None
    if text.strip().lower() == "none":
        return []
    try:
        return [float(item) for item in text.split(",")]
    except ValueError:
        raise OptionError(f"{{plans}} {text!r}: give shares of MACs such as 0.3,0.5, or none") from None


def cmd_analyze(args: argparse.Namespace) -> int:
    """Measure how the metric drops when each channel group is pruned at each ratio (sensitivity).

    For every prunable group and ratio, zero that fraction of the group's least important channels and
    evaluate with onnxruntime: top-1 when --data has `labels`, else the label-free fidelity to the
    unpruned model's outputs, or your own --eval function. By default each group's ratios are measured
    only as far as `prune --sens` can use them (plans up to --cover of MACs are the full table's) and each
    entry on as few samples as its metric needs; --exact measures everything. Finished entries are cached
    as they come, so the same command resumes after an interruption. Use the table with `prune --sens`."""
    from onnxprune.analysis.analyze import AnalyzeOptions, analyze, default_cache_dir
    from onnxprune.analysis.table import (
        DEFAULT_RATIOS,
        format_table,
        parse_ratios,
        plot_table,
        table_paths,
    )
    from onnxprune.graph.runtime import parse_providers
    from onnxprune.progress import ProgressBar
    from onnxprune.tables import terminal_width

    _check_output(args, *(table_paths(args.output) if args.output else []), args.plot)
    if args.plot:
        from onnxprune.plots import require_matplotlib

        require_matplotlib()
    options = AnalyzeOptions(
        data=args.data, eval=args.eval, ratios=parse_ratios(args.ratios) if args.ratios is not None else list(DEFAULT_RATIOS),
        criterion=args.criterion, workers=args.workers, ray=args.ray, cache_dir=args.cache or default_cache_dir(),
        force=args.force, val=args.val, providers=parse_providers(args.providers), attention=args.attention,
        round_to=args.round_to, reconstruct=args.reconstruct, metric=args.metric, exact=args.exact,
        samples=args.samples, budget=args.budget, **({} if args.cover is None else {"cover": args.cover}),
        plans=_shares(args.plans),
    )
    options.check()
    model = _load(args)

    def warn(text: str) -> None:  # above the bar on a terminal (rich redirects the output), a line of its own else
        print(f"warning: {text}", file=sys.stderr)

    with ProgressBar(sys.stderr) as bar:
        result = analyze(model, options, progress=bar.update, warn=warn)
    print(format_table(result.table, terminal_width(sys.stdout)))
    if args.output:
        written = result.table.save(args.output)
        print(f"wrote {' and '.join(map(str, written))}", file=sys.stderr)
    if args.plot:
        plot_table(result.table, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    print(f"{result.evaluated} entries evaluated, {result.cached} from the cache ({result.cache_path}); "
          f"cost {result.cost:.1f} evaluations of the unpruned model", file=sys.stderr)
    return EXIT_OK


def cmd_iterate(args: argparse.Namespace) -> int:
    """Run the iterative prune -> fine-tune loop from a TOML config; resumes an unfinished work dir.

    Each round prunes the last fine-tuned model to the schedule's next MACs ratio, fine-tunes it through
    the config's adapter (a command, or a Python factory such as one returning a TorchAdapter) with every
    trial's settings, and keeps the best trial if it is within the tolerance; otherwise it retries with a
    smaller step. The end writes the dense model (encrypted too, with [encrypt]) and prints the rounds;
    WORKDIR/report.json holds them as JSON. Run the same command again to resume after any interruption."""
    from onnxprune.loop.config import build_adapter, load_config
    from onnxprune.loop.iterate import run
    from onnxprune.loop.result import format_table
    from onnxprune.tables import terminal_width

    config = load_config(args.config)
    result = run(config, build_adapter(config.adapter), args.workdir)
    print(format_table(result, terminal_width(sys.stdout)))
    return EXIT_OK


def _free_memory() -> None:
    """Collect the IR's reference cycles now and hand the memory back, before the next big step."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
