"""The suite's own guards trip: a shared build that a test changed fails the session."""
import pytest

from tests.support import left_as_made


def test_a_changed_shared_build_fails_and_its_workdir_lock_does_not(tmp_path):
    (tmp_path / "openvino").mkdir()
    model = tmp_path / "openvino" / "model.bin"
    model.write_bytes(b"\0" * 64)
    lock = tmp_path / ".ocrnet-convert.lock"
    with left_as_made(tmp_path):   # a command that refused at once: its pid in the lock
        lock.write_text("4242\n")
    with pytest.raises(AssertionError, match="changed the shared build"):
        with left_as_made(tmp_path):
            model.write_bytes(b"\1" + b"\0" * 63)
    with pytest.raises(AssertionError, match="changed the shared build"):
        with left_as_made(tmp_path):
            (tmp_path / "openvino" / "extra.json").write_text("{}")
