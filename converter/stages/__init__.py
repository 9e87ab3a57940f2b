"""The conversion pipeline's stages, one module each, in pipeline order.

Every stage has `run(config, workdir, ...) -> StageResult`: it reads its
inputs from the workdir (checked against the records of the stages before
it), writes its outputs and its record there (records.py names every path),
and returns what it wrote. `converter.pipeline` runs them in this order.
"""
from dataclasses import dataclass, field


@dataclass
class StageResult:
    stage: str
    paths: list = field(default_factory=list)  # what the stage wrote (or found up to date)
    record: object = None    # records.StageRecord for export/onnx/openvino; the report or manifest (a dict)
    skipped: bool = False    # up to date: nothing was redone
    seconds: float = 0.0



def up_to_date(stage, folder, key, force=False, why="same inputs and parameters"):
    """The StageResult of a stage whose record in folder has this key and
    whose outputs are unchanged (util.incremental), or None: redo it."""
    from converter.records import record_files
    from converter.util.incremental import current_record
    from converter.util.log import info

    record = None if force else current_record(folder, stage, key)
    if record is None:
        return None
    info(f"{stage}: up to date ({why}); skipped. Use --force to redo.")
    return StageResult(stage, [p for p, _ in record_files(folder, stage, record)], record, skipped=True)
