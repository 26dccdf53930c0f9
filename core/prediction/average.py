"""Weight averaging of one run's per-epoch snapshots into one model (stochastic weight
averaging, Izmailov et al., UAI 2018).

Late in a run the epochs' weights scatter around a minimum that none of them reaches;
their mean lies nearer its centre and generalises better than any one of them, at no
cost at inference (one network, unlike an ensemble). It holds only for snapshots of one
run, close together: the network has no batch norm (instance norm keeps no running
statistics), so the averaged weights are used as they are.

    python -m core.prediction.average OUT MODEL [MODEL ...]

MODEL: model files, e.g. a run's ``snapshots/epoch_NNN.pt`` (``openatp train
--snapshots``). OUT: a folder that receives ``model.pt`` and ``config.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from core.errors import InputError


def average_models(paths, out_dir, site: str | None = None) -> Path:
    """Average the weights of the model files ``paths`` into ``out_dir/model.pt``.

    The files must declare the same network, channels and resolution. The result keeps
    the last file's metadata, with ``info["averaged_epochs"]`` (the snapshots' epochs, or
    their file names where an epoch is not recorded) and ``info["averaged_files"]``.
    """
    import torch

    from core.prediction.model_io import load_model, save_model

    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no model files to average")
    nets, metas = zip(*(load_model(p, "cpu", site=site) for p in paths))
    key = [(m["unet"], m["channels"], m["pool"], m["site"]) for m in metas]
    for p, k in zip(paths[1:], key[1:]):
        if k != key[0]:
            raise InputError(f"this model's network, channels or resolution differ from {paths[0].name}'s: "
                             "only snapshots of one run can be averaged", p)
    states = [n.state_dict() for n in nets]
    avg = {}
    for name, ref in states[0].items():
        if ref.is_floating_point():
            avg[name] = torch.stack([s[name].double() for s in states]).mean(0).to(ref.dtype)
        else:
            avg[name] = ref.clone()
    net = nets[-1]
    net.load_state_dict(avg)
    meta = dict(metas[-1])
    info = dict(meta.get("info", {}))
    info["averaged_epochs"] = [m.get("info", {}).get("epoch", p.name) for m, p in zip(metas, paths)]
    info["averaged_files"] = [str(p) for p in paths]
    meta["info"] = info
    return save_model(Path(out_dir), net, meta)


def main(argv=None) -> int:
    import argparse

    from core.errors import OpenATPError

    ap = argparse.ArgumentParser(prog="python -m core.prediction.average", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="folder for the averaged model.pt and config.json")
    ap.add_argument("models", nargs="+", help="model files of one run (e.g. snapshots/epoch_*.pt)")
    ap.add_argument("--site", default=None)
    args = ap.parse_args(argv)
    try:
        target = average_models(args.models, args.out, site=args.site)
    except OpenATPError as e:
        print(f"average: {e}", file=sys.stderr)
        return 2
    print(f"averaged {len(args.models)} models -> {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
