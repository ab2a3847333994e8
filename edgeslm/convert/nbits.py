"""GGUF blocks as MatMulNBits weights: exact carry-over of Q4_0 / Q4_1 / Q8_0, and 8-bit round-to-nearest."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeslm.convert.gguf_llama import (
    BLOCK,
    F16,
    F32,
    Q4_0,
    Q4_1,
    Q8_0,
    QuantTensor,
    dequantize,
    q4_0_parts,
    q4_1_parts,
    q8_0_parts,
)
from edgeslm.errors import ModelLoadError

CORRECTION_LEVELS = 2  # 4-bit levels that carry a folded Q4_1 correction (see fold_correction)


@dataclass
class NBitsWeight:
    """Inputs of one MatMulNBits node for a weight W [N, K]: dequantized W = (q - zero_point) * scale + correction.

    `packed` is uint8 [N, blocks, 32 * bits / 8]; `scales` float32 [N, blocks]; `zero_points` uint8 packed
    like the weights, or None for the default 2^(bits-1). `correction` float32 [N, K/32], when present, is a
    per-block constant added to every weight of the block (Q4_1's exact form). `fold_correction` moves it into
    the node itself: `sum_levels` > 0 says the node's input is x followed by that many copies of x's block sums
    (each padded to a whole block), and the blocks after the first K/32 hold the constant, level by level.
    """

    bits: int
    n: int
    k: int
    packed: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None = None
    correction: np.ndarray | None = None
    sum_levels: int = 0

    @property
    def k_in(self) -> int:
        """The node's input width: K, plus the block-sum columns of a folded correction."""
        return self.k + self.sum_levels * sums_width(self.k)

    def dequantize(self) -> np.ndarray:
        """W as float32 [N, K], the way MatMulNBits (plus the correction) reads it."""
        q = unpack(self.packed, self.bits)
        if self.zero_points is None:
            zp = np.full(self.scales.shape, 1 << (self.bits - 1), dtype=np.float32)
        else:
            zp = unpack(self.zero_points, self.bits)[:, : self.scales.shape[1]].astype(np.float32)
        w = (q.astype(np.float32) - zp[..., None]) * self.scales[..., None]
        main = self.k // BLOCK
        if self.sum_levels:
            levels = w[:, main:].reshape(self.n, self.sum_levels, -1)[:, :, :main]
            w = w[:, :main] + levels.sum(axis=1)[..., None]
        if self.correction is not None:
            w = w + self.correction[..., None]
        return w.reshape(self.n, self.k)


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ints along the last axis, first element in the lowest bits (MatMulNBits order)."""
    if bits == 8:
        return values.astype(np.uint8)
    if bits != 4:
        raise ValueError(f"bits={bits}: only 4 and 8 are written")
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros((*values.shape[:-1], 1), dtype=values.dtype)], axis=-1)
    v = values.astype(np.uint8)
    return (v[..., 0::2] | (v[..., 1::2] << 4)).astype(np.uint8)


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return packed
    out = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), dtype=np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def exact_q4_1(q: np.ndarray, d: np.ndarray, m: np.ndarray) -> NBitsWeight:
    """Q4_1 (w = d*q + m) as 4-bit weights with integer zero points z and a per-block correction c = m + d*z.

    z is the integer nearest -m/d (clipped to 0..15), so c is at most d/2 in size for ordinary
    blocks and the int8-activation kernel sees centred weights.
    """
    n, nb, _ = q.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(d != 0, np.rint(-m / d), 8.0)
    z = np.clip(z, 0, 15).astype(np.uint8)
    correction = (m.astype(np.float64) + d.astype(np.float64) * z).astype(np.float32)
    return NBitsWeight(4, n, nb * BLOCK, pack(q, 4), d.astype(np.float32), pack(z, 4), correction)


def exact_q4_0(q: np.ndarray, d: np.ndarray) -> NBitsWeight:
    """Q4_0 (w = d*(q - 8)) is MatMulNBits' own 4-bit form with the default zero point."""
    n, nb, _ = q.shape
    return NBitsWeight(4, n, nb * BLOCK, pack(q, 4), d.astype(np.float32))


def exact_q8_0(q: np.ndarray, d: np.ndarray) -> NBitsWeight:
    """Q8_0 (w = d*q, q signed) as unsigned 8-bit q + 128 with the default zero point 128."""
    n, nb, _ = q.shape
    unsigned = (q.astype(np.int16) + 128).astype(np.uint8)
    return NBitsWeight(8, n, nb * BLOCK, unsigned, d.astype(np.float32))


def asymmetric_blocks(values: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round-to-nearest per block: [N, blocks, 32] -> (codes uint8, scales float32, zero points uint8), with zero
    exactly representable (an all-zero block stays zero)."""
    top = (1 << bits) - 1
    lo = np.minimum(values.min(axis=-1), 0.0)
    hi = np.maximum(values.max(axis=-1), 0.0)
    scale = ((hi - lo) / top).astype(np.float32)
    scale = np.where(scale == 0, np.float32(1.0), scale)
    zp = np.clip(np.rint(-lo / scale), 0, top)
    q = np.clip(np.rint(values / scale[..., None]) + zp[..., None], 0, top)
    return q.astype(np.uint8), scale, zp.astype(np.uint8)


def rtn_8bit(w: np.ndarray) -> NBitsWeight:
    """Asymmetric 8-bit round-to-nearest per 32-block of a float weight [N, K] (zero stays exact)."""
    n, k = w.shape
    q, scale, zp = asymmetric_blocks(w.reshape(n, k // BLOCK, BLOCK).astype(np.float32), 8)
    return NBitsWeight(8, n, k, q, scale, zp)


def sums_width(k: int) -> int:
    """Columns of x's block sums as a folded correction reads them: K/32, padded to a whole block."""
    return -(-(k // BLOCK) // BLOCK) * BLOCK


def fold_correction(w: NBitsWeight, levels: int = CORRECTION_LEVELS) -> NBitsWeight:
    """Q4_1's per-block constants carried inside the MatMulNBits node, so a projection is one node.

    The constant c[n, b] multiplies blocksum_b(x); appended to the input, the block sums meet extra weight
    rows holding c as 4-bit blocks (32 constants of one output row per block). Each level quantizes what the
    levels before it missed: with two, a constant is off by at most 1/225 of the largest |c| in its 32-block
    (|c| <= d/2 in ordinary blocks, so 1/450 of a Q4_1 scale). On SmolLM2 the mean next-token KL vs fp32 is
    0.0034, as with the exact fp32 correction in nodes of its own, which cost a decode step ~20%.
    The 4-bit codes and scales of the weight itself do not change.
    """
    if w.correction is None or w.bits != 4 or w.sum_levels:
        return w
    width = sums_width(w.k)
    rest = np.zeros((w.n, width), np.float64)
    rest[:, : w.k // BLOCK] = w.correction
    codes, scales, zps = [unpack(w.packed, 4)], [w.scales], [unpack(w.zero_points, 4)[:, : w.scales.shape[1]]]
    for _ in range(levels):
        q, scale, zp = asymmetric_blocks(rest.reshape(w.n, width // BLOCK, BLOCK), 4)
        rest -= ((q.astype(np.float64) - zp[..., None]) * scale[..., None]).reshape(w.n, width)
        codes.append(q)
        scales.append(scale)
        zps.append(zp)
    return NBitsWeight(4, w.n, w.k, pack(np.concatenate(codes, axis=1), 4), np.concatenate(scales, axis=1),
                       pack(np.concatenate(zps, axis=1), 4), None, levels)


def exact_weight(t: QuantTensor) -> NBitsWeight:
    """Carry a GGUF weight over without changing any value (float weights become 8-bit: an approximation)."""
    if t.kind == Q4_1:
        return exact_q4_1(*q4_1_parts(t))
    if t.kind == Q4_0:
        return exact_q4_0(*q4_0_parts(t))
    if t.kind == Q8_0:
        return exact_q8_0(*q8_0_parts(t))
    if t.kind in (F32, F16):
        return rtn_8bit(dequantize(t))
    raise ModelLoadError(f"{t.name} is {t.kind_name}; this converter handles F32, F16, Q4_0, Q4_1 and Q8_0")


def int8_weight(t: QuantTensor) -> NBitsWeight:
    """The int8 variant: 8-bit weights, exact for Q8_0, round-to-nearest from the dequantized values otherwise."""
    if t.kind == Q8_0:
        return exact_q8_0(*q8_0_parts(t))
    return rtn_8bit(dequantize(t))


def stack(weights: list[NBitsWeight]) -> NBitsWeight:
    """Weights sharing K and encoding, concatenated along N (one MatMulNBits for Q|K|V or gate|up)."""
    first = weights[0]
    if any(w.bits != first.bits or w.k != first.k for w in weights):
        raise ModelLoadError("projections to fuse must share bit width and input size")
    if len({(w.zero_points is None, w.correction is None, w.sum_levels) for w in weights}) != 1:
        raise ModelLoadError("projections to fuse must share one GGUF type")

    def cat(name: str) -> np.ndarray | None:
        parts = [getattr(w, name) for w in weights]
        return None if parts[0] is None else np.concatenate(parts, axis=0)

    return NBitsWeight(first.bits, sum(w.n for w in weights), first.k, cat("packed"), cat("scales"),
                       cat("zero_points"), cat("correction"), first.sum_levels)


def permute_rows(w: NBitsWeight, order: np.ndarray) -> NBitsWeight:
    """The same weight with output rows reordered (whole blocks move, so no value changes)."""
    pick = (lambda a: None if a is None else a[order])  # noqa: E731
    return NBitsWeight(w.bits, w.n, w.k, w.packed[order], w.scales[order], pick(w.zero_points),
                       pick(w.correction), w.sum_levels)
