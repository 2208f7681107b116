"""Vectorised sampling of unobserved items (training negatives, evaluation
candidates), on any device.

Draw uniformly and find the draws that hit an observed item: one bit per
(user, item) pair where the users x items bits fit in 128 MiB (a gather), else
a binary search in the sorted ``user * n_items + item`` keys. Independent draws
(training negatives) redraw only the hits; distinct draws (evaluation
candidates) keep the first k valid draws of a longer row. With sparse data
almost every draw is accepted, so a few rounds suffice; there is no Python
loop over interactions.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import DataError


# Up to this many (user, item) pairs, membership is a bit per pair (128 MiB
# at most; a run holds up to five such sets: the training pairs, and both
# sides' observed and observed-or-listed pairs): one gather per query instead
# of a binary search through all the keys (CiteULike's 3 M keys: 5-10x
# faster). Foursquare's 713 M pairs take 89 MB.
BITSET_MAX_PAIRS = 1 << 30


class ObservedItems:
    """The set of (user, item) pairs a sampler must avoid, as a bit per pair
    (for at most ``BITSET_MAX_PAIRS`` pairs, or as ``bitset`` says) or as
    sorted keys ``user * n_items + item``; ``counts``: the pairs of each user."""

    def __init__(self, users: torch.Tensor | np.ndarray, items: torch.Tensor | np.ndarray, n_users: int, n_items: int,
                 device: torch.device | str = "cpu", *, bitset: bool | None = None) -> None:
        users = torch.as_tensor(users, dtype=torch.int64, device=device)
        items = torch.as_tensor(items, dtype=torch.int64, device=device)
        self.n_users = int(n_users)
        self.n_items = int(n_items)
        keys = users * self.n_items + items
        self.bits: torch.Tensor | None = None  # bit k % 8 of byte k // 8: key k is observed
        pairs = self.n_users * self.n_items
        if bitset if bitset is not None else pairs <= BITSET_MAX_PAIRS:
            # Each key adds its bit to its byte: that sets it when the keys
            # are distinct (the usual case: a user's interactions, or those
            # and the teacher's list of unobserved items), which the bits'
            # count proves: a repeated key carries into another bit, and
            # the count falls short. Only then are the keys made distinct,
            # by a sort (5x the time of the bits at CiteULike's size).
            self.bits = _bits_of(keys, pairs)
            # (a product and a sum, not `@`: CUDA has no int64 matrix-vector product)
            set_bits = (torch.bincount(self.bits, minlength=256) * _BIT_COUNTS.to(keys.device)).sum()
            if int(set_bits) != len(keys):
                keys = torch.unique(keys)
                self.bits = _bits_of(keys, pairs)
        else:
            keys = torch.unique(keys)
        self.keys = keys  # distinct; sorted where there are no bits (searched by contains)
        self.counts = torch.bincount(torch.div(keys, self.n_items, rounding_mode="floor"), minlength=self.n_users)

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Bool tensor (shape of ``items``): is ``(users, items)`` observed?
        ``users`` (in ``[0, n_users)``) broadcasts against ``items`` (in
        ``[0, n_items)``)."""
        query = users * self.n_items + items
        if self.bits is not None:
            return self.bits[query // 8].bitwise_right_shift(query % 8).bitwise_and_(1).bool()
        if len(self.keys) == 0:
            return torch.zeros_like(query, dtype=torch.bool)
        pos = torch.searchsorted(self.keys, query).clamp_max(len(self.keys) - 1)
        return self.keys[pos] == query


_BIT_COUNTS = torch.tensor([bin(byte).count("1") for byte in range(256)], dtype=torch.int64)


def _bits_of(keys: torch.Tensor, pairs: int) -> torch.Tensor:
    """One byte per 8 pairs, each key's bit added to its byte (set, for
    distinct keys, whose bits in a byte sum to at most 255; repeated keys
    carry, and may wrap around, which the caller's count of set bits shows)."""
    values = torch.ones_like(keys, dtype=torch.uint8).bitwise_left_shift_((keys % 8).to(torch.uint8))
    return torch.zeros((pairs + 7) // 8, dtype=torch.uint8, device=keys.device).index_add_(0, keys // 8, values)


def sample_unobserved(
    observed: ObservedItems,
    users: torch.Tensor,
    k: int,
    *,
    distinct: bool = False,
    pad: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``[len(users), k]`` items drawn uniformly among each user's unobserved
    items; ``distinct=True`` draws without replacement within a row. With
    ``pad=True`` (and ``distinct``) a user with fewer than ``k`` unobserved
    items gets all of them, ascending, then -1; otherwise that is an error."""
    users = users.to(device=observed.device, dtype=torch.int64)
    available = observed.n_items - observed.counts[users]
    if distinct and pad and len(users) and int(available.min()) < k:
        short = available < k
        out = torch.full((len(users), k), -1, dtype=torch.int64, device=observed.device)
        out[~short] = _sample_distinct(observed, users[~short], k, generator)
        all_items = torch.arange(observed.n_items, device=observed.device)
        for row in short.nonzero().flatten().tolist():  # rare rows (heavy users): O(n_items) each
            unobserved = all_items[~observed.contains(users[row], all_items)]
            out[row, :len(unobserved)] = unobserved
        return out
    if len(users) and int(available.min()) < (k if distinct else 1):
        worst = int(users[available.argmin()])
        raise DataError(
            f"user {worst} has only {int(available.min())} unobserved items, "
            f"cannot draw {k}{' distinct' if distinct else ''}"
        )
    if distinct:
        return _sample_distinct(observed, users, k, generator)
    draws = torch.randint(observed.n_items, (len(users), k), generator=generator, device=observed.device)
    redraw = observed.contains(users[:, None], draws)
    while bool(redraw.any()):
        draws[redraw] = torch.randint(observed.n_items, (int(redraw.sum()),), generator=generator,
                                      device=observed.device)
        redraw[redraw.clone()] = observed.contains(users[:, None].expand_as(draws)[redraw], draws[redraw])
    return draws


def _sample_distinct(observed: ObservedItems, users: torch.Tensor, k: int,
                     generator: torch.Generator | None) -> torch.Tensor:
    """Per row, a sequence of uniform draws; the first k that are unobserved and
    new in the row are a uniform sample without replacement. Draw more than k
    at once so that one round usually suffices; rows left short start again
    with twice as many draws."""
    out = torch.empty((len(users), k), dtype=torch.int64, device=observed.device)
    rows = torch.arange(len(users), device=observed.device)
    n_draws = k + k // 4 + 16
    while len(rows):
        draws = torch.randint(observed.n_items, (len(rows), n_draws), generator=generator, device=observed.device)
        valid = ~observed.contains(users[rows, None], draws) & ~_repeats_in_row(draws)
        enough = valid.sum(dim=1) >= k
        take = valid[enough] & (valid[enough].cumsum(dim=1) <= k)
        out[rows[enough]] = draws[enough][take].view(-1, k)
        rows = rows[~enough]
        n_draws *= 2
    return out


def _repeats_in_row(draws: torch.Tensor) -> torch.Tensor:
    """True at every occurrence of a value in its row except the first (in
    column order), so that redrawing them keeps the earlier draws."""
    sorted_vals, order = torch.sort(draws, dim=1, stable=True)
    repeat_sorted = torch.zeros_like(draws, dtype=torch.bool)
    repeat_sorted[:, 1:] = sorted_vals[:, 1:] == sorted_vals[:, :-1]
    return torch.zeros_like(repeat_sorted).scatter_(1, order, repeat_sorted)
