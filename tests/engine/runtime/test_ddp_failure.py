"""A failing rank ends the whole torchrun job with its one-line error instead of hanging the others."""
import pytest

from tests.conftest import tiny_flags
from tests.engine.ddp_worker import FAILED_PATH
from tests.engine.runtime.test_ddp import ROOT, torchrun

FLAGS = ["train", *tiny_flags(top_k=2, synthetic_train_size=8, synthetic_val_size=2, batch_size=2, epochs=1, lr=None,
                              stage2_lr=None, device="cpu", progress="off")]


@pytest.mark.slow
def test_a_failing_rank_ends_the_job_with_its_error(tmp_path):
    """Rank 1's second forward raises a disk-full error while rank 0 goes on into the gradient
    all-reduce. Before the fix rank 1 waited in ``shutdown``'s barrier, which rank 0, stuck in the
    all-reduce, never reached: both hung until gloo's 30-minute timeout."""
    result = torchrun(str(ROOT / "tests/engine/ddp_worker.py"), "cli", *FLAGS, "--checkpoint-dir", str(tmp_path / "c"),
                      timeout=120, env={"DDP_TEST_FAIL_RANK": "1", "DDP_TEST_FAIL_BATCH": "2"})
    assert result.returncode != 0
    assert f"error: {FAILED_PATH}: the disk is full" in result.stderr, result.stderr[-3000:]
    # The surviving rank either ends on its own one line or is stopped by torchrun; it never prints
    # gloo's traceback (torchrun's own failure summary below the ranks' output is the launcher's).
    assert "]: Traceback" not in result.stderr, result.stderr[-3000:]
    assert "forward_sync_buffers" not in result.stderr  # the DDP flag rename warns once per rank otherwise


def test_peer_lost_errors_are_told_apart_from_bugs():
    import torch.distributed as dist

    from engine.runtime.distributed import is_peer_lost

    gloo = RuntimeError("[../gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:22446. This is "
                        "typically caused by a remote worker crashing.")
    assert is_peer_lost(gloo)
    if hasattr(dist, "DistBackendError"):
        assert is_peer_lost(dist.DistBackendError("NCCL communicator was aborted on rank 0"))
    assert not is_peer_lost(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"))
    assert not is_peer_lost(ValueError("Connection closed by peer"))
