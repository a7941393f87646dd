import pytest
import torch.distributed as dist


@pytest.fixture
def single_rank_groups(tmp_path):
    """A real one-process gloo world with megatron-core's groups (TP = PP = DP = 1)."""
    from megatron.core import parallel_state as ps

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    ps.initialize_model_parallel(1, 1)
    yield
    ps.destroy_model_parallel()
    dist.destroy_process_group()
