"""`convert`: the stages in pipeline order, each skipped when up to date.

export (our model with the chosen weights, fetching the checkpoint when
they are auto or pretrained; or, for a paddle-inference config, the user's
inference model taken in by stages.inference_model) -> onnx -> openvino ->
model_api -> parity -> manifest. A failed parity gate
still gets its manifest and model card written (they say FAILED), then
fails the run with the gate's ParityFailure.
"""
from converter.errors import ParityFailure
from converter.stages import export, inference_model, manifest, model_api, onnx, openvino, parity


def first_stage(config, workdir, choice=None, *, inference_dir=None, allow_unverified=False, force=False):
    """The export stage's result: our model's export, or the user's inference model taken in."""
    if config.arch == "paddle-inference":
        return inference_model.run(config, workdir, folder=inference_dir, allow_unverified=allow_unverified,
                                   force=force)
    return export.run(config, workdir, choice, force=force)


def convert(config, workdir, choice, *, shape=None, images=None, threads=2, force=False, report=None,
            inference_dir=None, allow_unverified=False):
    """Run every stage; report(result) is called after each. Returns the
    StageResults; raises the first error (a ParityFailure only after the
    manifest is written). choice: the weights (None for a paddle-inference
    config, whose model comes from inference_dir or the config's sources)."""
    report = report or (lambda result: None)
    results = [first_stage(config, workdir, choice, inference_dir=inference_dir, allow_unverified=allow_unverified,
                           force=force)]
    report(results[-1])
    results.append(onnx.run(config, workdir, shape=shape, force=force))
    report(results[-1])
    results.append(openvino.run(config, workdir, shape=shape, force=force))
    report(results[-1])
    results.append(model_api.run(config, workdir, threads=threads, force=force))
    report(results[-1])
    failure = None
    try:
        results.append(parity.run(config, workdir, images=images, threads=threads))
        report(results[-1])
    except ParityFailure as exc:
        failure = exc
    results.append(manifest.run(config, workdir))
    report(results[-1])
    if failure:
        raise failure
    return results
