"""The README's first command: prune a real pretrained model without training it, end to end.

    python examples/ocr_direction/run.py [--fresh] [--calib 256] [--held-out 400] [--ratios 0.3,0.5]

The model is PP-OCR's text direction classifier (is a text line upright, or upside down?) exactly as the
`rapidocr_onnxruntime` 1.4.4 wheel ships it (Apache-2.0, see model/NOTICE.md); nobody here trained it.
The example renders text lines with Pillow, every second one turned by 180 degrees, and does what someone
who holds only the ONNX file would do:

  1. inspect    what can be pruned (the library: `onnxprune.inspect_model`)
  2. analyze    how much each channel group tolerates, on 128 of the 256 unlabeled calibration lines
  3. prune      30% and 50% of the MACs, the channels chosen and the layers reading them re-solved on the
                unlabeled lines: no labels, no training (`onnxprune prune --data`); and 30% without data,
                to compare
  4. transform  the most pruned model that keeps 99% of the unpruned top-1, to a dense model
  5. encrypt    it with a new key, then load it from memory (`onnxprune.secure.load_session`)

and scores every model it writes on 400 other, labeled lines (top-1). Steps 2-5 run the `onnxprune`
command in this process (`onnxprune.cli.main`), each printed first as you would type it. It writes, in
examples/ocr_direction/out/: calib.npz, analyze.npz and held_out.npz (the lines), sens.json (+ sens.csv),
pruned_30.onnx, pruned_50.onnx and pruned_30_nodata.onnx (sparse: channels zeroed) with their plans,
dense.onnx, key, dense.onnx.enc, report.json, and with matplotlib (`pip install 'onnxprune[example]'`)
summary.png and sensitivity.png.
Run it again and analyze takes its entries from out/cache; --fresh deletes out/ first.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import onnxprune
from onnxprune import cli
from onnxprune.secure import load_session

HERE = Path(__file__).resolve().parent
MODEL = HERE / "model" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
OUT = HERE / "out"
HEIGHT, WIDTH = 48, 192  # rapidocr's cls_image_shape
SHAPE = f"x:1,3,{HEIGHT},{WIDTH}"  # the model's input has a dynamic height and width: fix them
KEEP = 0.99  # the model to ship: the most pruned one that keeps this share of the unpruned top-1

# --- text lines ------------------------------------------------------------------------------------

FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path("/Library/Fonts"))
FONT_NAMES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
              "DejaVuSansCondensed.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSans-Oblique.ttf")
WORDS = ("total", "invoice", "amount", "date", "order", "street", "station", "account", "price", "market",
         "coffee", "garden", "window", "river", "school", "library", "office", "ticket", "airport", "train",
         "bridge", "water", "music", "paper", "delivery", "customer", "receipt", "payment", "address",
         "phone",
         "report", "weekly", "sales", "open", "closed", "exit", "parking", "hotel", "floor", "north", "south",
         "city", "center", "road", "avenue", "main", "square", "menu", "bakery", "platform")
CAPITALS = "ABCDEFGHJKLMNPRSTUVWXYZ"


@cache
def font_files() -> tuple[Path, ...]:
    """The DejaVu fonts this machine has (Debian's fonts-dejavu-core; most Linux images ship them)."""
    found: dict[str, Path] = {}
    for root in FONT_DIRS:
        if root.is_dir():
            for path in sorted(root.rglob("DejaVu*.ttf")):
                found.setdefault(path.name, path)
    return tuple(found[name] for name in FONT_NAMES if name in found)


@cache
def _font(path: Path | None, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size) if path is None else ImageFont.truetype(str(path), size)


def line_text(rng: np.random.Generator) -> str:
    """One line of at most 16 characters: two words, a word and a number, a date, a price, a code, digits."""
    first, second = (str(w) for w in rng.choice(WORDS, 2))
    kinds = (
        f"{first} {second}",
        f"{first.capitalize()} {rng.integers(1, 999)}",
        f"{rng.integers(1, 29):02d}/{rng.integers(1, 13):02d}/{rng.integers(1990, 2030)}",
        f"${rng.integers(1, 9999)}.{rng.integers(0, 100):02d}",
        "".join(rng.choice(list(CAPITALS), 3)) + f"-{rng.integers(100, 99999)}",
        str(rng.integers(1000, 10**9)),
    )
    return kinds[int(rng.integers(len(kinds)))][:16]


def render(text: str, rng: np.random.Generator) -> np.ndarray:
    """The text as a tight gray crop (H x W uint8): a random font and size, ink, paper, margins, noise."""
    fonts = font_files()
    font = _font(fonts[int(rng.integers(len(fonts)))] if fonts else None, int(rng.integers(22, 40)))
    left, top, right, bottom = (int(v) for v in font.getbbox(text))
    m_left, m_top, m_right, m_bottom = (int(m) for m in rng.integers(2, 10, size=4))
    paper, ink = int(rng.integers(170, 256)), int(rng.integers(0, 90))
    image = Image.new("L", (right - left + m_left + m_right, bottom - top + m_top + m_bottom), paper)
    ImageDraw.Draw(image).text((m_left - left, m_top - top), text, fill=ink, font=font)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (image.height, image.width))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def to_input(image: np.ndarray) -> np.ndarray:
    """rapidocr's resize_norm_img: height 48 keeping the aspect (at most 192 wide), (x/255 - 0.5)/0.5, three
    equal channels (a gray line), zero-padded on the right to 192."""
    h, w = image.shape
    width = min(WIDTH, math.ceil(HEIGHT * w / h))
    resized = np.asarray(Image.fromarray(image).resize((width, HEIGHT), Image.BILINEAR), dtype=np.float32)
    x = np.zeros((3, HEIGHT, WIDTH), dtype=np.float32)
    x[:, :, :width] = (resized / 255 - 0.5) / 0.5
    return x


def text_lines(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` rendered lines as the model's input [count, 3, 48, 192], and their labels: every second
    line is turned by 180 degrees (label 1; rapidocr's label list is '0', '180')."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count, dtype=np.int64) % 2
    images = [render(line_text(rng), rng) for _ in range(count)]
    x = np.stack([to_input(im[::-1, ::-1] if turned else im) for im, turned in zip(images, labels)])
    return x, labels


def write_lines(out: Path, calib: int, held_out: int, analysis: int) -> tuple[np.ndarray, np.ndarray]:
    """calib.npz (unlabeled: what `--data` reads), analyze.npz (its first `analysis` lines: analysis
    evaluates the model once per entry, so it gets fewer) and held_out.npz (other texts, with labels);
    returns the held-out lines and labels."""
    if not font_files():
        print("note: no DejaVu font under " + ", ".join(map(str, FONT_DIRS)) + ": the lines use Pillow's "
              "built-in font, so the numbers differ from the README's (Debian/Ubuntu: apt-get install "
              "fonts-dejavu-core)")
    x_calib, _ = text_lines(calib, seed=1)
    x_held, labels = text_lines(held_out, seed=2)
    np.savez(out / "calib.npz", x=x_calib)
    np.savez(out / "analyze.npz", x=x_calib[:analysis])
    np.savez(out / "held_out.npz", x=x_held, labels=labels)
    print(f"rendered {calib} calibration lines (no labels) -> {_rel(out / 'calib.npz')}, {held_out} held-out "
          f"lines with labels -> {_rel(out / 'held_out.npz')}; half of each turned upside down")
    return x_held, labels


# --- the steps ---------------------------------------------------------------------------------------


def _rel(path: Path) -> str:
    """A path as short as the user would type it (relative to the current folder when under it)."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


def onnxprune_command(*args: object) -> None:
    """Run one `onnxprune` command in this process, printed first as you would type it."""
    argv = [_rel(a) if isinstance(a, Path) else str(a) for a in args]
    print("\n$ onnxprune " + " ".join(shlex.quote(a) for a in argv), flush=True)
    code = cli.main(argv)
    sys.stdout.flush()
    if code:
        raise SystemExit(f"onnxprune {argv[0]} failed with exit code {code}")


def top1(model_file: Path, x: np.ndarray, labels: np.ndarray, key_file: Path | None = None) -> float:
    """Top-1 of a model file on labeled lines; an encrypted one is decrypted in memory with its key."""
    session = load_session(model_file, key_file=key_file)
    (probabilities,) = session.run(None, {"x": x})
    return float(np.mean(probabilities.argmax(1) == labels))


def inspect_summary(model_file: Path) -> tuple[str, int, int]:
    """`inspect`'s totals (the whole per-layer table: `onnxprune inspect MODEL --input-shape ...`), and the
    model's MACs and params."""
    report = onnxprune.inspect_model(onnxprune.load(model_file, {"x": (1, 3, HEIGHT, WIDTH)}))
    prunable = sum(g.prunable for g in report.groups)
    lines = [(f"{_rel(model_file)}: {report.macs / 1e6:.2f}M MACs and {report.params / 1e3:.1f}K params at "
              f"{SHAPE}; {prunable} of {len(report.groups)} channel groups prunable, which can shrink "
              f"{report.shrinkable_macs:.0%} of the MACs")]
    lines += [f"  blocked ({share:.1%} of MACs): {reason}" for reason, share in report.blocked()]
    return "\n".join(lines), report.macs, report.params


def analyze_step(out: Path, ratios: str, plot: bool) -> dict:
    """The sensitivity table on unlabeled calibration lines (label-free: fidelity to the unpruned model's
    outputs); entries are cached in out/cache."""
    picture = ["--plot", out / "sensitivity.png"] if plot else []
    onnxprune_command("analyze", MODEL, "--input-shape", SHAPE, "--data", out / "analyze.npz",
                      "--ratios", ratios,
                      "--cache", out / "cache", "-o", out / "sens.json", *picture)
    return json.loads((out / "sens.json").read_text())


def prune_step(out: Path, ratio: float, data: bool = True) -> tuple[Path, dict]:
    """Remove `ratio` of the MACs with reconstruction on the calibration lines (the default greedy channel
    choice), or without data (L1 magnitudes, nothing re-solved: what reconstruction is measured against);
    a sparse model (channels zeroed, the graph otherwise unchanged) and its plan."""
    name = f"pruned_{round(ratio * 100)}" + ("" if data else "_nodata")
    model, plan = out / f"{name}.onnx", out / f"{name}.plan.json"
    calibration = ["--data", out / "calib.npz"] if data else []
    onnxprune_command("prune", MODEL, "--input-shape", SHAPE, "--ratio", ratio, *calibration,
                      "--mode", "sparse", "-o", model, "--plan-out", plan)
    return model, json.loads(plan.read_text())


def deploy_step(out: Path, sparse: Path) -> tuple[Path, Path, Path]:
    """The chosen sparse model made dense (zeroed channels removed) and encrypted with a new key (kept if
    out/key exists); returns the dense model, the encrypted one and the key file."""
    dense, key, sealed = out / "dense.onnx", out / "key", out / "dense.onnx.enc"
    onnxprune_command("transform", sparse, "--input-shape", SHAPE, "-o", dense)
    if not key.exists():
        onnxprune_command("keygen", "-o", key)
    onnxprune_command("encrypt", dense, "-o", sealed, "--key-file", key)
    return dense, sealed, key


@dataclass
class Row:
    model: str
    macs: int
    params: int
    top1: float
    file: str


def chosen_row(rows: list[Row], baseline: float) -> Row:
    """The most pruned model that keeps KEEP of the unpruned top-1 (else the least pruned)."""
    good = [r for r in rows if r.top1 >= KEEP * baseline]
    return min(good, key=lambda r: r.macs) if good else max(rows, key=lambda r: r.macs)


def format_rows(rows: list[Row], held_out: int) -> str:
    """The table: MACs, MACs removed, params, top-1 on the held-out lines, and the share of it kept."""
    base = rows[0]
    lines = [f"{'model':<34} {'MACs':>8} {'removed':>8} {'params':>8} {'top-1':>7} {'kept':>7}",
             "-" * 77]
    for r in rows:
        lines.append(f"{r.model:<34} {r.macs / 1e6:>7.2f}M {1 - r.macs / base.macs:>8.1%} "
                     f"{r.params / 1e3:>7.1f}K "
                     f"{r.top1:>7.2%} {r.top1 / base.top1:>7.1%}")
    lines.append(f"(top-1 on {held_out} held-out lines, half of them upside down; kept: of the unpruned "
                 "top-1)")
    return "\n".join(lines)


@contextmanager
def timed(step: str, seconds: dict[str, list[float]]) -> Iterator[None]:
    """Record a step's wall and CPU seconds (CPU: this process's threads, onnxruntime's and BLAS' too)."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    seconds[step] = [round(time.perf_counter() - wall, 1), round(time.process_time() - cpu, 1)]


def has_matplotlib() -> bool:
    found = importlib.util.find_spec("matplotlib") is not None
    if not found:
        print("note: no picture without matplotlib: pip install 'onnxprune[example]' (or matplotlib)")
    return found


def plot_summary(rows: list[Row], plain: Row, plan: dict, chosen: str, path: Path) -> None:
    """Two panels: top-1 against the MACs removed (`rows`: the unpruned model, then the ones pruned with
    data; `plain`: pruned without); the chosen model's channels per group, kept of all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 2.2]})
    xs = [100 * (1 - r.macs / rows[0].macs) for r in rows]
    left.plot(xs, [100 * r.top1 for r in rows], marker="o", label="prune --data (no labels)")
    left.plot([100 * (1 - plain.macs / rows[0].macs)], [100 * plain.top1], "x", color="C3", markersize=9,
              label="prune without data")
    for x, r in zip([*xs, 100 * (1 - plain.macs / rows[0].macs)], [*rows, plain]):
        left.annotate(f"{r.top1:.1%}", (x, 100 * r.top1), textcoords="offset points", xytext=(0, 6),
                      ha="center")
    left.margins(x=0.1, y=0.12)
    left.axhline(100 * KEEP * rows[0].top1, color="k", linestyle="--", linewidth=1,
                 label=f"{KEEP:.0%} of unpruned")
    left.set(xlabel="MACs removed (%)", ylabel="top-1 on held-out lines (%)", title="No training")
    left.legend(loc="center right", fontsize="small")
    left.grid(True, alpha=0.3)
    groups = sorted(plan["groups"].items(), key=lambda item: int(item[0].rpartition("@")[2] or 0))
    ticks = np.arange(len(groups))
    right.bar(ticks, [g["channels"] for _, g in groups], color="0.85", label="before")
    right.bar(ticks, [g["channels"] - len(g["removed"]) for _, g in groups], label="kept")
    right.set_xticks(ticks, [gid for gid, _ in groups], rotation=90, fontsize="small")
    right.set(ylabel="channels", title=f"Channels per group, {chosen}")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fresh", action="store_true", help="delete the output folder first (and its cache)")
    parser.add_argument("--calib", type=int, default=256, help="calibration lines, unlabeled (default 256)")
    parser.add_argument("--analyze-lines", type=int, default=128, help="of them, for analyze (default 128)")
    parser.add_argument("--held-out", type=int, default=400, help="labeled lines to score on (default 400)")
    parser.add_argument("--ratios", default="0.3,0.5", help="fractions of MACs to remove (default 0.3,0.5)")
    parser.add_argument("--analyze-ratios", default="0.2,0.4,0.6",
                        help="analyze's ratios (default 0.2,0.4,0.6)")
    parser.add_argument("--out", type=Path, default=OUT,
                        help="output folder (default examples/ocr_direction/out)")
    return parser.parse_args(argv)


def prune_rows(out: Path, ratios: list[float], x: np.ndarray, labels: np.ndarray,
               seconds: dict[str, list[float]]) -> tuple[list[Row], dict[str, dict]]:
    """Step 3 at every ratio: the rows of the pruned (sparse) models and their plans, by file."""
    rows, plans = [], {}
    for ratio in ratios:
        with timed(f"prune {ratio}", seconds):
            sparse, plan = prune_step(out, ratio)
        plans[_rel(sparse)] = plan
        rows.append(Row(f"{sparse.name} (sparse)", plan["macs_after"], plan["params_after"],
                        top1(sparse, x, labels), _rel(sparse)))
        print(f"top-1 on the held-out lines: {rows[-1].top1:.2%}")
    return rows, plans


def no_data_row(out: Path, ratio: float, x: np.ndarray, labels: np.ndarray) -> Row:
    """For comparison: the same ratio pruned without calibration data (what --data is for)."""
    print("\nthe same without --data (channels by L1 magnitude, nothing re-solved), for comparison:")
    sparse, plan = prune_step(out, ratio, data=False)
    row = Row(f"{sparse.name} (no --data)", plan["macs_after"], plan["params_after"], top1(sparse, x, labels),
              _rel(sparse))
    print(f"top-1 on the held-out lines: {row.top1:.2%}")
    return row


def deploy_rows(out: Path, chosen: Row, x: np.ndarray, labels: np.ndarray) -> list[Row]:
    """Steps 4-5 on the chosen model: the rows of the dense model and of the encrypted one, each scored
    from its file."""
    sparse = Path(chosen.file).resolve()
    print(f"\n== 4-5. transform and encrypt {sparse.name}: the most pruned keeping {KEEP:.0%} of the top-1")
    dense, sealed, key = deploy_step(out, sparse)
    report = onnxprune.inspect_model(onnxprune.load(dense, {"x": (1, 3, HEIGHT, WIDTH)}))
    return [Row("dense.onnx (transform)", report.macs, report.params, top1(dense, x, labels), _rel(dense)),
            Row("dense.onnx.enc (in memory)", report.macs, report.params, top1(sealed, x, labels, key),
                _rel(sealed))]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wall, cpu, seconds = time.perf_counter(), time.process_time(), {}
    out = args.out.resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    print("== 1. inspect")
    with timed("inspect, render, score", seconds):
        summary, macs, params = inspect_summary(MODEL)
        print(summary)
        x, labels = write_lines(out, args.calib, args.held_out, args.analyze_lines)
        rows = [Row("unpruned", macs, params, top1(MODEL, x, labels), _rel(MODEL))]
    print(f"unpruned top-1 on the held-out lines: {rows[0].top1:.2%}")
    print("\n== 2. analyze (label-free, on the calibration lines)")
    picture = has_matplotlib()
    with timed("analyze", seconds):
        analyze_step(out, args.analyze_ratios, picture)
    print("\n== 3. prune with reconstruction (--data: the calibration lines, no labels, no training)")
    ratios = [float(r) for r in args.ratios.split(",")]
    pruned, plans = prune_rows(out, ratios, x, labels, seconds)
    with timed("prune without data", seconds):
        plain = no_data_row(out, ratios[0], x, labels)
    chosen = chosen_row(pruned, rows[0].top1)
    with timed("transform, encrypt", seconds):
        deployed = deploy_rows(out, chosen, x, labels)
    rows += [plain, *pruned, *deployed]
    print("\n" + format_rows(rows, len(labels)))
    if picture:
        plot_summary([rows[0], *pruned], plain, plans[chosen.file], Path(chosen.file).name,
                     out / "summary.png")
        print(f"wrote {_rel(out / 'summary.png')} and {_rel(out / 'sensitivity.png')}")
    seconds["total"] = [round(time.perf_counter() - wall, 1), round(time.process_time() - cpu, 1)]
    result = {"rows": [asdict(r) for r in rows], "chosen": chosen.file, "seconds (wall, cpu)": seconds,
              "fonts": [p.name for p in font_files()], "calib": args.calib, "held_out": args.held_out}
    (out / "report.json").write_text(json.dumps(result, indent=1) + "\n")
    print("time (wall / CPU s): " + ", ".join(f"{k} {w:.0f} / {c:.0f}" for k, (w, c) in seconds.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
