"""Device helpers shared by the chunked and the decode kernels.

Every kernel works on the packed layout: q, k are [TT, H, K], v is [TT, H, V] with
TT = B * T, and sequence n owns rows cu_seqlens[n] : cu_seqlens[n + 1]. A batch of
equal-length sequences is just the packed case with evenly spaced offsets, so one
code path serves both. A chunk is C = 64 consecutive rows of one sequence; the last
chunk of a sequence may be short and its missing rows are masked to zero (g = 0,
beta = 0, k = v = 0), which leaves the state untouched.
"""

import triton
import triton.language as tl

CHUNK = 64
L2_EPS = 1e-6


@triton.jit
def chunk_coordinates(chunk_index, cu_seqlens, i_c, C: tl.constexpr):
    """Sequence id, first packed row and number of valid rows of the flat chunk i_c."""
    i_n = tl.load(chunk_index + 2 * i_c)
    i_t = tl.load(chunk_index + 2 * i_c + 1)
    bos = tl.load(cu_seqlens + i_n)
    eos = tl.load(cu_seqlens + i_n + 1)
    row0 = bos + i_t * C
    n_valid = tl.minimum(eos - row0, C)
    return i_n, row0, n_valid


@triton.jit
def tile_ptrs(base, row0, n_valid, row_stride, col0, n_cols, R: tl.constexpr, BC: tl.constexpr):
    """Pointers and mask for an [R, BC] tile: rows row0.. of a row-major matrix, columns col0.."""
    rows = tl.arange(0, R)
    cols = col0 + tl.arange(0, BC)
    ptrs = base + (row0 + rows).to(tl.int64)[:, None] * row_stride + cols[None, :]
    mask = (rows < n_valid)[:, None] & (cols < n_cols)[None, :]
    return ptrs, mask


@triton.jit
def load_unit_rows(ptrs, mask, USE_L2: tl.constexpr):
    """Load a tile in float32, L2-normalize each row when asked; also return 1/||row||.

    x * rsqrt(sum x^2 + eps), as reference.l2_normalize. Zero (masked) rows stay zero.
    """
    x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    if USE_L2:
        rnorm = tl.rsqrt(tl.sum(x * x, 1) + 1e-6)
        x = x * rnorm[:, None]
    else:
        rnorm = tl.sum(x * 0.0, 1) + 1.0
    return x, rnorm


@triton.jit
def softplus(x):
    """log(1 + e^x), accurate for very negative x where g -> 0 (decay -> 1).

    log(1 + z) in float32 loses all digits below 6e-8 relative to 1, so for small
    z = e^-|x| a short series is used instead (its error z^5/5 < 2e-9 at z = 0.01).
    """
    z = tl.exp(-tl.abs(x))
    series = z * (1.0 - z * (0.5 - z * (1.0 / 3.0 - z * 0.25)))
    log1p_z = tl.where(z < 0.01, series, tl.log(1.0 + z))
    return tl.maximum(x, 0.0) + log1p_z


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def gate_rows(a, b, A_log, dt_bias, row0, n_valid, i_h, a_scale, b_scale, H, C: tl.constexpr):
    """Gate of one chunk's rows, all 0 on missing rows: log decay g, write strength beta,
    the softplus input x and 1 - beta. The last is formed as sigmoid(-y) rather than by
    subtraction, which would lose every digit once beta rounds to 1 in float32."""
    rows = tl.arange(0, C)
    valid = rows < n_valid
    offs = (row0 + rows).to(tl.int64) * H + i_h
    x = tl.load(a + offs, mask=valid, other=0.0).to(tl.float32) * a_scale + tl.load(dt_bias + i_h).to(tl.float32)
    g = -tl.exp(tl.load(A_log + i_h).to(tl.float32)) * softplus(x)
    g = tl.where(valid, g, 0.0)
    y = tl.load(b + offs, mask=valid, other=0.0).to(tl.float32) * b_scale
    beta = tl.where(valid, sigmoid(y), 0.0)
    one_minus_beta = tl.where(valid, sigmoid(-y), 0.0)
    return g, beta, x, one_minus_beta


@triton.jit
def load_row_vector(ptr, row0, n_valid, i_h, H, C: tl.constexpr):
    """A per-token per-head float32 scalar ([TT, H] array) for the rows of one chunk, 0 if missing."""
    rows = tl.arange(0, C)
    return tl.load(ptr + (row0 + rows).to(tl.int64) * H + i_h, mask=rows < n_valid, other=0.0)


@triton.jit
def load_cum_decay(g_cum, row0, n_valid, i_h, H, C: tl.constexpr):
    """In-chunk cumulative log decay G of one chunk and its last valid value G_last.

    Missing rows have g = 0, so their G continues at G_last (as the cumsum in the prep
    kernel gives). Padding them with 0 instead would make exp(G_i - G_j) overflow for a
    missing row i when the decay is strong, and inf * 0 poisons the valid rows.
    """
    rows = tl.arange(0, C)
    G_last = tl.load(g_cum + (row0 + n_valid - 1).to(tl.int64) * H + i_h)
    G = tl.load(g_cum + (row0 + rows).to(tl.int64) * H + i_h, mask=rows < n_valid, other=0.0)
    return tl.where(rows < n_valid, G, G_last), G_last
