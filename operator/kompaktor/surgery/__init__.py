"""Model surgery shared by the prune and distill stages.

`graph` finds the channels of an exported (torch.fx) model that can be removed for real,
`channels` removes them, `saliency` scores weights and channels, `masks` holds unstructured
sparsity through fine-tuning, `modules` rewrites an exported graph's linear layers between
their forms (functional, nn.Linear, the sparse kernels'), `layouts` lets chained sparse layers
hand on their activations untransposed. Nothing here knows about stages, jobs or artifacts.
"""

from kompaktor.surgery.channels import (
    channel_count,
    keep_top,
    remove_channels,
    stored_elements,
    width_reduce,
)
from kompaktor.surgery.graph import (
    ChannelGroup,
    as_graph_module,
    channel_groups,
    multiply_adds,
    output_layers,
)
from kompaktor.surgery.layouts import chain_sparse_layouts
from kompaktor.surgery.masks import (
    MaskHold,
    hold_masks,
    masks_for_sparsity,
    prunable_weights,
    sparsity_of,
)
from kompaktor.surgery.modules import dense_sparse_linears, linear_modules, sparse_linears
from kompaktor.surgery.saliency import (
    Batch,
    channel_l1_scores,
    channel_taylor_scores,
    magnitude_scores,
    taylor_scores,
)
from kompaktor.surgery.schedule import sparsity_schedule

__all__ = [
    "Batch",
    "ChannelGroup",
    "MaskHold",
    "as_graph_module",
    "chain_sparse_layouts",
    "channel_count",
    "channel_groups",
    "channel_l1_scores",
    "channel_taylor_scores",
    "dense_sparse_linears",
    "hold_masks",
    "keep_top",
    "linear_modules",
    "magnitude_scores",
    "masks_for_sparsity",
    "multiply_adds",
    "output_layers",
    "prunable_weights",
    "remove_channels",
    "sparse_linears",
    "sparsity_of",
    "sparsity_schedule",
    "stored_elements",
    "taylor_scores",
    "width_reduce",
]
