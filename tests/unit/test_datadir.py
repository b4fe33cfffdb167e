from pathlib import Path

import pytest

from service.datadir import DataDirBusy, DataDirLock

pytestmark = pytest.mark.unit


def test_one_owner_at_a_time_and_the_server_url_is_handed_over(tmp_path: Path) -> None:
    owner, other = DataDirLock(tmp_path), DataDirLock(tmp_path)
    assert owner.try_acquire()
    assert not other.try_acquire()
    assert other.server_url() is None
    with pytest.raises(DataDirBusy, match="in use by process"):
        other.acquire()
    owner.publish_server("http://127.0.0.1:8123")
    assert other.server_url() == "http://127.0.0.1:8123"
    owner.release()
    assert other.try_acquire()
    assert other.server_url() is None  # the departed server's address is gone
    other.release()
