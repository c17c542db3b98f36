"""The decoder's KV cache: the only mutable decoding state.

Static and position-indexed (the idea of gpt-fast's KVCache): buffers are allocated once for the whole text
context, a forward pass writes the keys/values of its new positions at [length, length + n_new), and
`length` says how much is valid. So rolling back rejected speculative tokens is free (`crop`), beam
search reorders rows in place (`reorder`), and speculative beam search keeps a path of its proposal tree
laid out in sequence order (`select`). Cross-attention keys/values depend only on the audio, so they
are computed once per window and shared by every row.
"""

from __future__ import annotations

import torch


class KVCache:
    """Self-attention keys/values for `n_batch` rows, plus the window's cross-attention keys/values.

    self_k, self_v: shape = (n_layer, n_batch, n_head, n_ctx, d_head)
    cross_k[i], cross_v[i]: shape = (n_audio, n_head, n_audio_ctx, d_head), n_audio is 1 or n_batch
    """

    def __init__(
        self,
        n_layer: int,
        n_batch: int,
        n_head: int,
        d_head: int,
        n_ctx: int,
        cross_k: list[torch.Tensor],
        cross_v: list[torch.Tensor],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (n_layer, n_batch, n_head, n_ctx, d_head)
        self.self_k = torch.zeros(shape, dtype=dtype, device=device)
        self.self_v = torch.zeros(shape, dtype=dtype, device=device)
        self.cross_k = cross_k
        self.cross_v = cross_v
        self.n_batch = n_batch
        self.n_ctx = n_ctx
        self.length = 0

    def crop(self, length: int) -> None:
        """Forget every position at or after `length` (speculative rollback). O(1): nothing is copied."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of length {self.length} to {length}")
        self.length = length

    def reorder(self, beam_indices: torch.Tensor) -> None:
        """Row i becomes old row beam_indices[i], for i < len(beam_indices) <= n_batch: beam search follows
        its beams, and a beam draft goes from the B live beams to its own 2B beams and back."""
        n_rows = beam_indices.shape[0] if beam_indices.dim() == 1 else -1
        if not 1 <= n_rows <= self.n_batch:
            raise ValueError(
                f"reorder needs 1 to {self.n_batch} indices, got shape {tuple(beam_indices.shape)}"
            )
        idx = beam_indices.to(self.self_k.device)
        n = self.length
        self.self_k[:, :n_rows, :, :n] = self.self_k[:, idx, :, :n]
        self.self_v[:, :n_rows, :, :n] = self.self_v[:, idx, :, :n]
        for i, (k, v) in enumerate(zip(self.cross_k, self.cross_v, strict=True)):
            if k.shape[0] > 1:  # a shared (n_audio = 1) cross cache needs no reordering
                if n_rows != k.shape[0]:
                    raise ValueError("per-row cross-attention keys/values reorder only as a whole")
                self.cross_k[i], self.cross_v[i] = k[idx], v[idx]

    def select(self, rows: torch.Tensor, positions: torch.Tensor) -> None:
        """Row i becomes old row rows[i] read at positions[i]: shape(rows) = (n,), shape(positions) =
        (n, m), n <= n_batch; the length becomes m. Speculative beam search keeps each new beam's path out
        of a tree of proposals: the shared prefix, then the slots of the path's nodes."""
        n, m = positions.shape
        if rows.shape != (n,) or not 1 <= n <= self.n_batch or m > self.n_ctx:
            raise ValueError(f"select needs 1 to {self.n_batch} rows, got {tuple(rows.shape)}")
        rows, positions = rows.to(self.self_k.device), positions.to(self.self_k.device)
        for buffer in (self.self_k, self.self_v):
            # advanced indices on dims 1 and 3 come out first: shape = (n, m, n_layer, n_head, d_head)
            buffer[:, :n, :, :m] = buffer[:, rows[:, None], :, positions].permute(2, 0, 3, 1, 4)
        self.length = m

    def copy_positions(self, other: KVCache, start: int, end: int) -> None:
        """Take positions [start, end) of `other` (a cache of the same shape, whose rows hold the same
        tokens there): this cache's length becomes `end`. start must be at most this cache's length."""
        if not 0 <= start <= min(self.length, end) or end > other.length:
            raise ValueError(f"cannot copy positions {start}:{end} into a cache of length {self.length}")
        self.self_k[:, :, :, start:end] = other.self_k[:, :, :, start:end]
        self.self_v[:, :, :, start:end] = other.self_v[:, :, :, start:end]
        self.length = end

    def reserve(self, n_new: int) -> tuple[int, int]:
        """Claim positions for `n_new` tokens; returns (start, end) and advances `length` to end."""
        start, end = self.length, self.length + n_new
        if end > self.n_ctx:
            raise ValueError(f"text context overflow: {end} positions > n_ctx {self.n_ctx}")
        self.length = end
        return start, end
