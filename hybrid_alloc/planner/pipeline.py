"""Pipeline-parallel stages: which decoder layers (and so which cache layers) each rank holds."""

from __future__ import annotations

from hybrid_alloc.errors import UserError
from hybrid_alloc.models.layout import CacheLayer, ModelLayout


def pp_indices(
    num_layers: int, pp_rank: int, pp_size: int, partition: str | None = None
) -> tuple[int, int]:
    """``vllm.distributed.utils.get_pp_indices``: [start, end) decoder layers of ``pp_rank``.

    ``partition`` is ``VLLM_PP_LAYER_PARTITION`` ("12,10,10"). Without it the remainder of
    ``num_layers / pp_size`` goes one layer each to the stages before the last, from the
    second-to-last backwards.
    """
    if partition is not None:
        try:
            partitions = [int(layer) for layer in partition.split(",")]
        except ValueError:
            raise UserError(f"Invalid partition string: {partition}") from None
        if len(partitions) != pp_size:
            raise UserError(f"len(partitions)={len(partitions)} does not match pp_size={pp_size}.")
        if sum(partitions) != num_layers:
            raise UserError(
                f"sum(partitions)={sum(partitions)} does not match num_hidden_layers={num_layers}."
            )
    else:
        partitions = [num_layers // pp_size] * pp_size
        for i in range(2, num_layers % pp_size + 2):
            partitions[-i] += 1
    start = sum(partitions[:pp_rank])
    return start, start + partitions[pp_rank]


def stage_layers(
    layout: ModelLayout, pp_size: int, partition: str | None = None
) -> list[tuple[CacheLayer, ...]]:
    """The cache layers of each pipeline stage, in layer order (a stage may hold none).

    Layers numbered past the decoder layers (a speculative drafter's, e.g. MTP) run on the last
    rank, as vLLM's drafter does.
    """
    stages = []
    for rank in range(pp_size):
        start, end = pp_indices(layout.num_decoder_layers, rank, pp_size, partition)
        if rank == pp_size - 1:
            end = max(end, max((layer.decoder_layer + 1 for layer in layout.layers), default=end))
        stages.append(tuple(layer for layer in layout.layers if start <= layer.decoder_layer < end))
    return stages
