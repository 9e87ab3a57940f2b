#!/usr/bin/env python3
"""Write a checkpoint of an OCRNet-HRNet family member with seeded synthetic weights.

    python tools/make_checkpoint.py --backbone hrnet_w18 --classes 5 --output w18.pdparams [--seed 0]

The weights are the project's synthetic ones (converter/weights/synthetic.py:
He-initialised, BatchNorm recalibrated on the bundled samples), saved as
paddle.save saves a state dict (a pickled dict of numpy arrays, protocol 4),
so that a family member other than the shipped one can be converted offline,
as a user would convert a checkpoint of their own.
"""
import argparse
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--classes", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    from converter.config import load_config
    from converter.data.images import input_contract
    from converter.model import build_model
    from converter.util.fsutil import write_bytes_atomic
    from converter.weights.synthetic import synthetic_state_dict

    model = build_model(args.classes, backbone=args.backbone)
    state = synthetic_state_dict(model, args.seed, input_contract(load_config(), "original"))
    write_bytes_atomic(args.output, pickle.dumps(state, protocol=4))
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
