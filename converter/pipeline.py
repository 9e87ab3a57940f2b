"""`convert`: the stages in pipeline order, each skipped when up to date.

export (which fetches the checkpoint when the weights are auto or
pretrained) -> onnx -> openvino -> model_api -> parity -> manifest. A failed parity gate
still gets its manifest and model card written (they say FAILED), then
fails the run with the gate's ParityFailure.
"""
from converter.errors import ParityFailure
from converter.stages import export, manifest, model_api, onnx, openvino, parity


def convert(config, workdir, choice, shape=None, images=None, threads=2, force=False, report=None):
    """Run every stage; report(result) is called after each. Returns the
    StageResults; raises the first error (a ParityFailure only after the
    manifest is written)."""
    report = report or (lambda result: None)
    results = [export.run(config, workdir, choice, force=force)]
    report(results[-1])
    results.append(onnx.run(config, workdir, shape, force=force))
    report(results[-1])
    results.append(openvino.run(config, workdir, shape, force=force))
    report(results[-1])
    results.append(model_api.run(config, workdir, threads, force=force))
    report(results[-1])
    failure = None
    try:
        results.append(parity.run(config, workdir, images, threads))
        report(results[-1])
    except ParityFailure as exc:
        failure = exc
    results.append(manifest.run(config, workdir))
    report(results[-1])
    if failure:
        raise failure
    return results
