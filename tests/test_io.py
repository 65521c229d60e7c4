"""The one atomic writer and the one .npz reader that every file of the project goes through."""

import os
import stat

import numpy as np
import pytest

from jax_rnn.checkpoint import atomic_write, read_npz


def test_atomic_write_gives_the_usual_permissions_not_mkstemps_0600(tmp_path):
    target = tmp_path / "out.json"
    atomic_write(target, b"{}")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left behind


def test_read_npz_round_trip_and_clear_errors(tmp_path):
    np.savez(tmp_path / "ok.npz", x=np.arange(3), y=np.ones(2))
    arrays = read_npz(tmp_path / "ok.npz")
    assert sorted(arrays) == ["x", "y"] and arrays["x"].tolist() == [0, 1, 2]
    np.save(tmp_path / "single.npy", np.zeros(3))
    os.rename(tmp_path / "single.npy", tmp_path / "single.npz")
    with pytest.raises(ValueError, match=r"not an \.npz archive \(a single \.npy array\)"):
        read_npz(tmp_path / "single.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not a zip archive"):
        read_npz(tmp_path / "text.npz")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "ok.npz").read_bytes()[:40])
    with pytest.raises(ValueError):
        read_npz(tmp_path / "cut.npz")
