"""The attention implementation our models are built with: PyTorch's SDPA, with flash kernels when compiled too.

Eager, `transformers` gives SDPA no mask for an unpadded window (`is_causal=True` for a decoder), which is what
selects the flash kernels (CUDA's and the CPU's) and lets a causal one skip the blocks above the diagonal. Under
`torch.compile` it materialises the mask instead (transformers 5.17-5.24 with torch 2.11-2.13): the skip declines
while tracing (`is_tracing()`, transformers issue 48925), and a decoder's own `position_ids` are read for packed
sequences, which a trace cannot do, so an all-zero "packed" mask is and-ed in. SDPA then runs a masked kernel over
the whole square (never a flash kernel on CUDA; every block on the CPU). The compiled training step, which most
wants the fast kernel, got the slow one.

`WHOLE_WINDOW_SDPA` is transformers' own `sdpa` attention function with a mask function that knows what our code
feeds a model: whole windows, never packed. With no padding mask, no cache offset and no local window, the mask is
the window's plain causal (or bidirectional) one and is left to SDPA, compiled or not; every other mask (padding,
a cache during generation) is the stock `sdpa_mask`'s. The name is registered in transformers' two interfaces
(`register()`); a saved config does not record it, so a checkpoint loads with the stock `sdpa` or any other.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

WHOLE_WINDOW_SDPA = "sdpa_whole_window"


@functools.cache
def register() -> str:
    """Register `WHOLE_WINDOW_SDPA` with transformers (once per process) and return the name to build with."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(WHOLE_WINDOW_SDPA, sdpa_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(WHOLE_WINDOW_SDPA, whole_window_sdpa_mask)
    return WHOLE_WINDOW_SDPA


def whole_window_sdpa_mask(**arguments: Any) -> torch.Tensor | None:
    """None (SDPA's `is_causal`, or no mask for an encoder) for a whole unpadded window; else the stock mask."""
    from transformers.masking_utils import sdpa_mask

    if is_whole_window(arguments):
        return None
    return sdpa_mask(**arguments)


def is_whole_window(arguments: dict[str, Any]) -> bool:
    """Whether `sdpa_mask`'s keyword arguments describe a whole window: no padding mask, no local window, and the
    queries and keys the same positions from 0 (no cache before them). Offsets that are tensors (static caches)
    would need reading, so they are not."""
    if arguments.get("attention_mask") is not None or arguments.get("local_size") is not None:
        return False
    q_length, kv_length = arguments.get("q_length"), arguments.get("kv_length")
    q_offset, kv_offset = arguments.get("q_offset", 0), arguments.get("kv_offset", 0)
    if q_length is None and isinstance(arguments.get("cache_position"), torch.Tensor):
        # Earlier transformers 5 releases (5.0 among them) pass the queries' positions instead: as many queries
        # as keys, from key 0, can only start at position 0 (a cache holds the positions before the queries).
        q_length = arguments["cache_position"].shape[0]
    if not all(isinstance(value, int) for value in (q_length, kv_length, q_offset, kv_offset)):
        return False
    return q_length == kv_length and q_offset == 0 and kv_offset == 0
