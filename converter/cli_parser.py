"""The command line's arguments (converter.cli runs the commands)."""
import argparse
import os
import sys

from converter import __version__, backends
from converter.config import MAX_CONVERTED_PIXELS, QUANTIZE_CHOICES
from converter.errors import ConverterError
from converter.layout import Workdir

DEFAULT_WORKDIR = "artifacts"


def _shape(text):
    try:
        dims = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,C,H,W integers, got '{text}'") from None
    if len(dims) != 4 or dims[0] != 1 or dims[1] != 3 or min(dims) <= 0:
        raise argparse.ArgumentTypeError(f"expected 1,3,H,W with positive H and W, got '{text}'")
    if dims[2] % 32 or dims[3] % 32:
        raise argparse.ArgumentTypeError(f"H and W must be multiples of 32, got '{text}'")
    if dims[2] * dims[3] > MAX_CONVERTED_PIXELS:
        raise argparse.ArgumentTypeError(f"{dims[2]}x{dims[3]} is more than {MAX_CONVERTED_PIXELS >> 20} megapixels")
    return tuple(dims)


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'") from None
        if not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be positive and finite, got '{text}'")
        return value
    return parse


def _tile(text):
    try:
        dims = [int(v) for v in text.lower().split("x")]
    except ValueError:
        dims = []
    if len(dims) != 2 or min(dims) <= 0 or dims[0] % 32 or dims[1] % 32:
        raise argparse.ArgumentTypeError(f"expected HxW, positive multiples of 32, got '{text}'")
    return dims


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got '{text}'")
    return value


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got '{text}'")
    return value


def _output_folder(path):
    """--output must be a folder or not exist yet (never an existing file)."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ConverterError(f"--output {path} exists and is not a folder")
    return path


class _Renamed(argparse.Action):
    """An old spelling of an option, kept for one release: it still works, with a one-line notice."""

    def __init__(self, option_strings, dest, new_name, **kwargs):
        self.new_name = new_name
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"notice: {option_string} is now {self.new_name}; the old spelling goes in the next release",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


# Every option that more than one command takes, defined once. A command
# names the ones it takes (COMMANDS below); where the default differs, the
# command says so (`threads`).
def _config(p):
    p.add_argument("--config", help="model config YAML (default: configs/ocrnet-hrnet-w48-paddle.yaml)")


def _workdir(p):
    p.add_argument("--workdir", type=Workdir, default=DEFAULT_WORKDIR, help="artifact folder (default: %(default)s)")


def _force(p):
    p.add_argument("--force", action="store_true", help="redo even when the outputs are up to date")


def _input_shape(p, help="static input shape N,C,H,W (default: the config's)"):
    p.add_argument("--input-shape", type=_shape, help=help)


def _images(p, help="images (default: the bundled samples)", group=None, required=False):
    (group or p).add_argument("--images", nargs="+", metavar="FILE_OR_DIR", help=help,
                              **({"required": True} if required else {}))


def _cityscapes(p, help="labelled images in the Cityscapes layout (leftImg8bit/, gtFine/)", group=None,
                required=False):
    (group or p).add_argument("--cityscapes", metavar="ROOT", help=help, **({"required": True} if required else {}))
    p.add_argument("--split", default="val", help="with --cityscapes (default: %(default)s)")


def _limit(p, help="with --cityscapes: the first N images"):
    p.add_argument("--limit", type=_positive(int), help=help)


def _threads(p, default=None, help="threads per worker (default: cores / workers)"):
    # an int, not _positive: cli._check_counts refuses 0 and more than the cores in one error line
    p.add_argument("--threads", type=int, default=default,
                   help=help + (" (default: %(default)s)" if default else ""))


def _workers(p):
    # 1 by default: on 2 cores one worker with 2 threads did 66 s/image (6 backends, full size),
    # two with 1 thread each 88 s (they contend for memory bandwidth)
    p.add_argument("--workers", type=_positive(int), default=1,
                   help="worker processes (or Ray actors), each running the backends in turn on its own "
                        "images (default: %(default)s)")
    _threads(p)


def _backends(p, help="converted backends to compare (default: all built; the reference always runs)"):
    p.add_argument("--backends", nargs="+", metavar="NAME", choices=backends.NAMES, help=help)


def _backend(p, default=backends.DEFAULT, help="a backend of the registry"):
    p.add_argument("--backend", choices=backends.NAMES, help=help + (" (default: %(default)s)" if default else ""),
                   **({"default": default} if default else {"required": True}))


def _sources(p):
    p.add_argument("--cache-dir", help="content-addressed download cache (default: see docs/cli.md)")
    p.add_argument("--mirror", help="base URL to fetch the checkpoint from")


def _weights(p):
    p.add_argument("--weights", default="auto",
                   help="auto (default), pretrained, synthetic, or a .pdparams path")
    p.add_argument("--seed", type=int, default=0, help="seed for synthetic weights (default: 0)")
    p.add_argument("--allow-unverified", action="store_true",
                   help="load a --weights PATH whose sha384 differs from the config's")
    _sources(p)
    p.add_argument("--inference-model", metavar="DIR",
                   help="a paddle-inference config's model: the folder of model.pdmodel, model.pdiparams and "
                        "deploy.yaml (default: where the config's files say)")


def _convert(p):
    _weights(p)
    _input_shape(p)
    _images(p, help="images for the parity gate (default: the bundled samples)")
    _threads(p, help="threads of the parity worker (default: the cores)")
    _force(p)


def _fetch(p):
    p.add_argument("--output", default=Workdir(DEFAULT_WORKDIR).download,
                   help="where to place the files (default: %(default)s)")
    p.add_argument("--cache-dir", help="content-addressed download cache (default: see docs/cli.md)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--mirror", help="fetch every file as URL/<file name>")
    src.add_argument("--from", dest="from_dir", metavar="DIR", help="take the files from a local folder")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--quiet", action="store_true", help="no progress output")
    out.add_argument("--json", action="store_true", help="progress events as JSON lines on stdout")
    p.add_argument("--only", choices=["checkpoint", "training-config"], action="append",
                   help="fetch only files with this role (repeatable)")
    p.add_argument("--connect-timeout", type=_positive(float), default=10.0, help="seconds (default: %(default)s)")
    p.add_argument("--read-timeout", type=_positive(float), default=30.0, help="seconds (default: %(default)s)")
    p.add_argument("--retries", type=_non_negative_int, default=4, help="retries per file (default: %(default)s)")


def _export(p):
    _weights(p)
    p.add_argument("--output", help="output folder (default: WORKDIR/paddle)")
    p.add_argument("--without-argmax", action="store_true",
                   help="output the logits [N,classes,H,W] instead of class indices")
    p.add_argument("--logits-output", metavar="DIR",
                   help="also write the --without-argmax variant there, from the same weights load")
    _force(p)


def _openvino(p):
    _input_shape(p)
    p.add_argument("--read-from", dest="source", choices=["paddle", "onnx"], default=None,
                   help="the model the IR is read from: the Paddle export (default for a legacy .pdmodel) or the "
                        "ONNX model (default, and the only way, for a Paddle 3 PIR export)")
    p.add_argument("--from", dest="source", choices=["paddle", "onnx"], action=_Renamed, new_name="--read-from",
                   help=argparse.SUPPRESS)
    _force(p)


def _model_api(p):
    _threads(p, default=2, help="threads for the check")
    _force(p)


def _quantize(p):
    _images(p, help="calibration images (default: the bundled samples)")
    p.add_argument("--subset-size", type=_positive(int), help="calibration tiles to use (default: the config's)")
    p.add_argument("--calibration-tile", type=_tile, metavar="HxW", help="tile size (default: the config's)")
    for key, choices in QUANTIZE_CHOICES.items():
        if key == "ignored_scope":
            p.add_argument("--ignored-scope", metavar="SCOPE[,TENSOR...]",
                           help=f"{' or '.join(choices)}, then optionally tensor names whose readers stay in float "
                                "(as diagnose suggests them; default: the config's)")
        else:
            p.add_argument("--" + key.replace("_", "-"), choices=choices, help="default: the config's")
    _cityscapes(p, help="labelled data: quantize with accuracy control (mIoU) instead")
    p.add_argument("--max-drop", type=_fraction, help="largest mIoU drop, absolute (default: the config's)")
    p.add_argument("--max-iterations", type=_positive(int), default=8,
                   help="accuracy control's layer reverts at most (default: %(default)s)")
    _force(p)


def _parity(p):
    data = p.add_mutually_exclusive_group()
    _images(p, help="images to compare on (default: the bundled samples)", group=data)
    _cityscapes(p, help="labelled images (Cityscapes layout): adds the mIoU task budget", group=data)
    _limit(p)
    _workers(p)
    _backends(p)


def _validate(p):
    data = p.add_mutually_exclusive_group(required=True)
    _images(p, help="images (no labels)", group=data)
    _cityscapes(p, group=data)
    p.add_argument("--output", required=True, metavar="OUT", help="where results and reports go")
    _backends(p)
    _limit(p, help="the first N images")
    p.add_argument("--executor", choices=["local", "ray"], default="local", help="default: %(default)s")
    p.add_argument("--ray-address", metavar="HOST:PORT", help="join this Ray cluster (default: start one)")
    _workers(p)
    p.add_argument("--chunk", type=_positive(int), help="images a worker holds the reference outputs of at once "
                   "(default: as many as 640 MB of them; more: fewer model loads, more memory)")
    p.add_argument("--trust-unsealed", action="store_true",
                   help="reuse stored results this machine did not seal (e.g. a shared folder written by "
                        "another user), after their schema check; validate.json records it")


def _diagnose(p):
    _backend(p, default=None, help="a converted backend of the registry")
    p.add_argument("--images", nargs="+", metavar="FILE", help="images (default: the first bundled sample)")
    p.add_argument("--output", default="diagnose", metavar="OUT", help="where the report goes (default: %(default)s)")
    _input_shape(p, help="compare at this size (default: the build's; the IRs reshape, ONNX does not)")
    _threads(p, default=2, help="inference threads")
    p.add_argument("--first-only", action="store_true", help="stop after the window of tensors that holds the "
                   "first divergence")
    p.add_argument("--window-mb", type=_positive(int), help="tensors each model returns at once, in MB (default: "
                   "1024; less: less memory, more runs)")


def _predict(p):
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    _backend(p)
    p.add_argument("--output", default="predictions", help="output folder (default: %(default)s)")
    _threads(p, default=2, help="inference threads")


def _evaluate(p):
    _cityscapes(p, help="dataset root (leftImg8bit/, gtFine/)", required=True)
    _backend(p)
    p.add_argument("--limit", type=_positive(int), help="evaluate only the first N images")
    _workers(p)
    p.add_argument("--jobs", help=argparse.SUPPRESS)   # retired: an error naming --workers
    p.add_argument("--output", required=True, metavar="DIR", help="where metrics.json and metrics.md go")


def _bench(p):
    _input_shape(p, help="must match the artifacts (default: theirs)")
    p.add_argument("--runs", type=int, default=5, help="steady runs per backend (default: %(default)s)")
    _threads(p, default=2, help="threads per backend")
    _backends(p, help=f"subset to run (default: all of {', '.join(backends.NAMES)})")
    p.add_argument("--engine", action="store_true",
                   help="then run the validate engine on the same backends and hold it to these figures "
                        "(inference, wall time per image, peak RSS)")
    p.add_argument("--engine-images", type=_positive(int), default=2,
                   help="sample images for --engine (default: %(default)s)")


def _package(p):
    p.add_argument("--output", default="dist", metavar="DIST", help="where to write (default: %(default)s)")
    p.add_argument("--allow-unverified", action="store_true",
                   help="package a build whose parity failed or whose files differ from MANIFEST.json "
                        "(the archive says so)")
    p.add_argument("--verify", metavar="ARCHIVE", help="check an archive against its SHA256SUMS and MANIFEST.json")
    p.add_argument("--sha256", metavar="HEX|FILE", help="with --verify: the archive's sha256 from a source you "
                   "trust (64 hex digits, or the published ARCHIVE.sha256 file); without it --verify proves only "
                   "that the archive agrees with itself")


def _init(p):
    p.add_argument("--config", help=argparse.SUPPRESS)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", metavar="CKPT", help="a .pdparams checkpoint of OCRNet on a release-2.3 HRNet")
    src.add_argument("--inference-model", metavar="DIR", help="a PaddleSeg export: model.pdmodel, model.pdiparams, "
                     "deploy.yaml")
    p.add_argument("--output", required=True, metavar="CONFIG.yaml", help="the config to write")
    p.add_argument("--paddleseg-config", metavar="TRAIN.yml", help="the PaddleSeg training config (its _base_ "
                   "files are read from beside it, never fetched)")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line (default: class_0, class_1, ...)")
    _input_shape(p, help="the converted models' static shape (default: the training config's or deploy.yaml's "
                 "size, else 1,3,512,1024)")
    p.add_argument("--name", help="the model's name, the stem of every artifact (default: the config's file name)")
    p.add_argument("--force", action="store_true", help="replace an existing --output (never one of init's inputs, "
                   "nor anything but a regular file)")


def _nothing_more(p):
    pass


# command -> (help, takes --config and --workdir, its own options)
COMMANDS = {
    "convert": ("the whole pipeline: export, onnx, openvino, parity, manifest", True, _convert),
    "fetch": ("download the checkpoint and configs, verified and cached", False, _fetch),
    "export": ("write the Paddle inference model (release-2.3 format)", True, _export),
    "onnx": ("convert the Paddle export to ONNX (BGR 0..255 input)", True, lambda p: (_input_shape(p), _force(p))),
    "openvino": ("convert to OpenVINO IR, FP32 and FP16 (BGR 0..255 input)", True, _openvino),
    "model-api": ("the Model API flavour of each IR (Softmax scores), gated against it", True, _model_api),
    "quantize": ("INT8 IR: NNCF post-training quantization of the FP32 IR", True, _quantize),
    "parity": ("compare original, ONNX and IR outputs; exit 10 when the gate fails", True, _parity),
    "validate": ("original vs backends over a whole image set: resumable, local or on Ray", True, _validate),
    "diagnose": ("name the layer where a converted backend starts to disagree with the original", True, _diagnose),
    "predict": ("segment images; write class, colour and overlay PNGs", True, _predict),
    "evaluate": ("Cityscapes mIoU against the published per-class IoU", True, _evaluate),
    "bench": ("latency, peak RSS and roofline fraction of each backend", True, _bench),
    "package": ("OVMS and OMZ layouts and a reproducible release archive; or --verify one", True, _package),
    "init": ("write a config for your own model: a checkpoint of the OCRNet-HRNet family, or any "
             "PaddleSeg-exported inference model", False, _init),
    "manifest": ("write MANIFEST.json and the model card README.md (last step)", True, _nothing_more),
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="ocrnet-convert",
        description="Convert PaddleSeg OCRNet-HRNet models, and any PaddleSeg inference model, "
                    "to ONNX and OpenVINO IR, and prove parity.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help, in_workdir, add_options) in COMMANDS.items():
        p = sub.add_parser(name, help=help)
        if name != "init":
            _config(p)
        if in_workdir:
            _workdir(p)
        add_options(p)
    return parser
