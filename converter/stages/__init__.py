"""The conversion pipeline's stages, one module each, in pipeline order.

Every stage has `run(config, workdir, ...) -> StageResult`: it reads its
inputs from the workdir (checked against the records of the stages before
it), writes its outputs and its record there (records.py names every path),
and returns what it wrote. `converter.pipeline` runs them in this order.
"""
import os
import time
from dataclasses import dataclass, field


@dataclass
class StageResult:
    """What a stage or a command returns: what it wrote, and its record or document."""
    stage: str
    paths: list = field(default_factory=list)  # what the stage wrote (or found up to date)
    record: object = None    # records.StageRecord for export/onnx/openvino; the report or manifest (a dict)
    skipped: bool = False    # up to date: nothing was redone
    seconds: float = 0.0



def up_to_date(stage, folder, key, force=False, why="same inputs and parameters"):
    """The StageResult of a stage whose record in folder has this key and
    whose outputs are unchanged (util.incremental), or None: redo it."""
    from converter.records import record_files
    from converter.records import current_record
    from converter.util.log import info

    record = None if force else current_record(folder, stage, key)
    if record is None:
        return None
    info(f"{stage}: up to date ({why}); skipped. Use --force to redo.")
    return StageResult(stage, [p for p, _ in record_files(folder, stage, record)], record, skipped=True)


@dataclass
class Written:
    """What a stage's build step put in its staging folder."""
    files: dict     # as the record lists them: {name: {size, sha256}}, or grouped by subfolder
    names: list     # the paths written, relative to the stage's folder
    fields: dict    # the record's other fields: weights, input, output, params


def run_stage(stage, folder, *, key, force, build, start, why="same inputs and parameters"):
    """The skeleton of every converting stage: skip it when up to date;
    else build(staging folder) -> Written, published with the folder as one
    step (util.fsutil.staging_dir: a killed run leaves no record beside a
    mix of old and new files), the record written last."""
    from converter.layout import STAGES
    from converter.records import StageRecord, write_record
    from converter.util.fsutil import staging_dir

    skipped = up_to_date(stage, folder, key, force, why)
    if skipped:
        return skipped
    with staging_dir(folder, record=STAGES[stage].record) as tmp:
        written = build(tmp)
    record = StageRecord(stage, written.files, key, seconds=round(time.perf_counter() - start, 1), **written.fields)
    write_record(folder, record)
    return StageResult(stage, [os.path.join(folder, n) for n in written.names], record, seconds=record.seconds)

