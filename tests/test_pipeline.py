import pytest

from hybrid_alloc.errors import UserError
from hybrid_alloc.models.layout import CacheLayer, ModelLayout
from hybrid_alloc.planner.pipeline import pp_indices, stage_layers


def _vllm_get_pp_indices():
    vllm_utils = pytest.importorskip("vllm.distributed.utils")
    return vllm_utils.get_pp_indices


@pytest.mark.vllm
@pytest.mark.parametrize("num_layers", [1, 7, 24, 32, 52, 61, 118])
@pytest.mark.parametrize("pp_size", [1, 2, 3, 4, 5])
def test_pp_indices_match_vllm(num_layers, pp_size):
    get_pp_indices = _vllm_get_pp_indices()
    for rank in range(pp_size):
        assert pp_indices(num_layers, rank, pp_size) == get_pp_indices(num_layers, rank, pp_size)


@pytest.mark.vllm
@pytest.mark.parametrize("partition", ["10,12,10", "0,16,16", "32,0,0"])
def test_partition_env_matches_vllm(partition, monkeypatch):
    get_pp_indices = _vllm_get_pp_indices()
    monkeypatch.setenv("VLLM_PP_LAYER_PARTITION", partition)
    for rank in range(3):
        assert pp_indices(32, rank, 3, partition) == get_pp_indices(32, rank, 3)


@pytest.mark.vllm
@pytest.mark.parametrize("partition,pp_size", [("a,b", 2), ("16,16", 3), ("16,15", 2), ("", 1)])
def test_partition_errors_match_vllm(partition, pp_size, monkeypatch):
    get_pp_indices = _vllm_get_pp_indices()
    monkeypatch.setenv("VLLM_PP_LAYER_PARTITION", partition)
    with pytest.raises(ValueError) as vllm_error:
        get_pp_indices(32, 0, pp_size)
    with pytest.raises(UserError) as ours:
        pp_indices(32, 0, pp_size, partition)
    assert str(ours.value) == str(vllm_error.value)


def test_stage_layers_split_by_decoder_layer_and_drafter_on_last_stage():
    layers = tuple(CacheLayer(f"l{i}", i, "attention", num_kv_heads=1, head_size=64) for i in range(5))
    mtp = CacheLayer("mtp", 5, "attention", num_kv_heads=1, head_size=64)
    layout = ModelLayout("m", "test", "t", "A", "bfloat16", 5, 4096, layers + (mtp,))
    stages = stage_layers(layout, 2)
    assert [[layer.name for layer in stage] for stage in stages] == [["l0", "l1", "l2"], ["l3", "l4", "mtp"]]
