// Persistent small-batch kernels: W_hh stays in shared memory for the whole
// sequence, one grid-wide barrier per step.  Launched cooperatively (CuPy
// RawModule(enable_cooperative_groups=True)) so that every block is resident.
//
// Work split: block k owns hidden units j in [k*U, k*U + nu), nu = min(U, H - k*U),
// with all G gates of those units, so it holds the G*nu rows
// W_hh[g*H + j, :] (row rr = g*nu + u) in shared memory.
//
// Forward, per step: read h (B, H) from global (written by every block the
// step before) into shared memory; each warp computes RB rows of
// W_hh h over one chunk of k for all B columns at a time (the chunks'
// partial sums are added in a fixed order); the block's threads apply the cell to
// its (b, u) pairs and write h' to hs; grid barrier.
//
// Backward, per step: the block applies the cell backward to its own (b, u)
// pairs (running dh, dc for its units live in shared memory), which gives
// dhg for its G*nu rows; it multiplies them by its own rows of W_hh into a
// partial dh_prev (B, H) written to global (double-buffered by step parity);
// grid barrier; each block then sums the partials of all blocks for its own
// units.  Deterministic: fixed summation order, no atomics on data.
//
// Shared memory (scalar_t elements):
//   forward : G*U*H (W) + B*H (h) + KS*B*G*U (partial gate pre-activations,
//             KS k-chunks: frnn_kchunks)
//   backward: G*U*FRNN_MAXB (dhg, [rr][b]) + G*U*H (W) + 2*B*U (dh, dc)
// (fastrnn._backends.cupy_cuda.persistent_smem computes the same numbers.)
// blockDim.x must be a multiple of 32; B <= FRNN_MAXB.
#define FASTRNN_CELLS_ONLY
#include "common.cuh"
#include "rnn.cu"
#include "gru.cu"
#include "lstm.cu"

#ifndef FASTRNN_PERSISTENT_CU
#define FASTRNN_PERSISTENT_CU

// Rows of W_hh a warp multiplies at once (h is read once from shared memory
// for RB rows).  Fewer for double: the accumulators are twice as large.
#define FRNN_RB (sizeof(scalar_t) == 4 ? 4 : 2)

__device__ __forceinline__ void frnn_load_w_slice(scalar_t* Wsm, const scalar_t* __restrict__ w_hh,
                                                  int G, int H, int j0, int nu) {
    const int R = G * nu;
    const int n = R * H;
    for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
        const int rr = idx / H;
        const int k = idx - rr * H;
        const int g = rr / nu;
        const int u = rr - g * nu;
        Wsm[idx] = w_hh[(size_t)(g * H + j0 + u) * H + k];
    }
}

// The forward's split of W_hh h into work items: nrb blocks of RB rows (of the
// G*U a block may own) times KS chunks of KC (a multiple of 32) along k, with
// KS = nwarps / nrb (at least 1, at most ceil(H / 32)).  U, not the block's
// own nu, so every block and the host (persistent_smem) agree on KS.
__device__ __forceinline__ void frnn_kchunks(int G, int U, int H, int nwarps, int& nrb, int& KS, int& KC) {
    nrb = (G * U + FRNN_RB - 1) / FRNN_RB;
    KS = nwarps / nrb;
    if (KS < 1) KS = 1;
    const int kmax = (H + 31) / 32;
    if (KS > kmax) KS = kmax;
    KC = ((H + KS - 1) / KS + 31) / 32 * 32;
}

template <class Cell>
__device__ __forceinline__ void frnn_persist_fwd(
    const scalar_t* __restrict__ xg, const scalar_t* __restrict__ w_hh,
    const scalar_t* __restrict__ b_ih, const scalar_t* __restrict__ b_hh,
    const long long* __restrict__ lengths,
    scalar_t* hs, scalar_t* cs, scalar_t* y, scalar_t* save,
    unsigned int* barrier, int write_save, int T, int B, int H, int U, int reverse)
{
    constexpr int G = Cell::G;
    constexpr int S = Cell::S;
    constexpr int RB = FRNN_RB;
    if (B > FRNN_MAXB || (blockDim.x & 31) != 0) __trap();
    const int GU = G * U;
    const int GH = G * H;
    const int j0 = blockIdx.x * U;
    const int nu = min(U, H - j0);  // >= 1: the grid has ceil(H / U) blocks
    const int R = G * nu;
    const int tid = threadIdx.x;
    const int nthr = blockDim.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int nwarps = nthr >> 5;

    int nrb, KS, KC;
    frnn_kchunks(G, U, H, nwarps, nrb, KS, KC);

    scalar_t* Wsm = reinterpret_cast<scalar_t*>(frnn_dyn_smem());
    scalar_t* hsm = Wsm + (size_t)GU * H;
    scalar_t* gsm = hsm + (size_t)B * H;                    // [KS][B][GU] partial sums
    frnn_load_w_slice(Wsm, w_hh, G, H, j0, nu);
    // (the first __syncthreads of the loop orders these writes before use)

    for (int s = 0; s < T; ++s) {
        const int t = reverse ? T - 1 - s : s;
        const size_t in_base = (size_t)(reverse ? t + 1 : t) * B * H;
        const size_t out_base = (size_t)(reverse ? t : t + 1) * B * H;

        // 1. h entering step t, written by all blocks (or the host) before.
        for (int idx = tid; idx < B * H; idx += nthr) hsm[idx] = __ldcg(hs + in_base + idx);
        __syncthreads();

        // 2. gsm[kc][b][g*U + u] = sum over k in chunk kc of W_hh[g*H + j0 + u, k] * h[b, k]:
        //    work items (row block of RB rows, k chunk), so that all warps work
        //    even when the block has few rows (vanilla RNN: G*U = 6 rows at
        //    H = 768 would keep 2 of 8 warps busy; see frnn_kchunks)
        for (int item = warp; item < nrb * KS; item += nwarps) {
            const int rb = item % nrb;
            const int kc = item / nrb;
            const int r0 = rb * RB;
            if (r0 >= R) continue;                  // rows past nu (last block): never read
            const int k1 = min(H, (kc + 1) * KC);
            scalar_t acc[RB][FRNN_MAXB];
#pragma unroll
            for (int q = 0; q < RB; ++q)
#pragma unroll
                for (int b = 0; b < FRNN_MAXB; ++b) acc[q][b] = scalar_t(0);
            for (int k = kc * KC + lane; k < k1; k += 32) {
                scalar_t w[RB];
#pragma unroll
                for (int q = 0; q < RB; ++q)
                    w[q] = (r0 + q < R) ? Wsm[(size_t)(r0 + q) * H + k] : scalar_t(0);
#pragma unroll
                for (int b = 0; b < FRNN_MAXB; ++b) {
                    if (b < B) {
                        const scalar_t hv = hsm[b * H + k];
#pragma unroll
                        for (int q = 0; q < RB; ++q) acc[q][b] += w[q] * hv;
                    }
                }
            }
#pragma unroll
            for (int q = 0; q < RB; ++q) {
                const int rr = r0 + q;  // warp-uniform
                if (rr < R) {
                    const int g = rr / nu;
                    const int u = rr - g * nu;
#pragma unroll
                    for (int b = 0; b < FRNN_MAXB; ++b) {
                        if (b < B) {
                            const scalar_t v = frnn_warp_sum(acc[q][b]);
                            if (lane == 0) gsm[(size_t)kc * B * GU + b * GU + g * U + u] = v;
                        }
                    }
                }
            }
        }
        __syncthreads();

        // 3. the cell, for this block's (b, u) pairs
        for (int idx = tid; idx < B * nu; idx += nthr) {
            const int b = idx / nu;
            const int u = idx - b * nu;
            const int j = j0 + u;
            const bool valid = (long long)t < lengths[b];
            const scalar_t* xrow = xg + ((size_t)t * B + b) * GH;
            scalar_t xin[G], hin[G];
#pragma unroll
            for (int g = 0; g < G; ++g) {
                xin[g] = xrow[g * H + j] + b_ih[g * H + j];
                scalar_t acc = gsm[b * GU + g * U + u];
                for (int kc = 1; kc < KS; ++kc) acc += gsm[(size_t)kc * B * GU + b * GU + g * U + u];
                hin[g] = acc + b_hh[g * H + j];
            }
            const size_t bj = (size_t)b * H + j;
            const scalar_t h = hsm[b * H + j];
            const scalar_t c = Cell::HAS_C ? __ldcg(cs + in_base + bj) : scalar_t(0);
            scalar_t hn, cn, sv[FRNN_SAVE_LEN(S)];
            Cell::fwd(xin, hin, h, c, hn, cn, sv);
            hs[out_base + bj] = valid ? hn : h;
            if (Cell::HAS_C) cs[out_base + bj] = valid ? cn : c;
            y[((size_t)t * B + b) * H + j] = valid ? hn : scalar_t(0);
            if (write_save) {
                scalar_t* srow = save + ((size_t)t * B + b) * ((size_t)S * H);
#pragma unroll
                for (int q = 0; q < S; ++q) srow[q * H + j] = sv[q];
            }
        }

        // 4. h' visible to every block before the next step reads it
        frnn_grid_sync(barrier);
    }
}

template <class Cell>
__device__ __forceinline__ void frnn_persist_bwd(
    const scalar_t* __restrict__ w_hh, const long long* __restrict__ lengths,
    const scalar_t* __restrict__ hs, const scalar_t* __restrict__ cs,
    const scalar_t* __restrict__ save, const scalar_t* __restrict__ dy,
    scalar_t* dh, scalar_t* dc, scalar_t* dxg, scalar_t* dhg, scalar_t* partial,
    unsigned int* barrier, int T, int B, int H, int U, int reverse)
{
    constexpr int G = Cell::G;
    constexpr int S = Cell::S;
    if (B > FRNN_MAXB || (blockDim.x & 31) != 0) __trap();
    const int GU = G * U;
    const int GH = G * H;
    const int nblk = gridDim.x;
    const int j0 = blockIdx.x * U;
    const int nu = min(U, H - j0);
    const int tid = threadIdx.x;
    const int nthr = blockDim.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int nwarps = nthr >> 5;

    // dgl first: at the 16-byte aligned base, its rows of FRNN_MAXB values are
    // aligned too, so the compiler may read them with vector loads.
    scalar_t* dgl = reinterpret_cast<scalar_t*>(frnn_dyn_smem());  // [(g*nu + u) * FRNN_MAXB + b]
    scalar_t* Wsm = dgl + (size_t)GU * FRNN_MAXB;                  // [(g*nu + u) * H + k]
    scalar_t* dhl = Wsm + (size_t)GU * H;                          // [b * U + u]
    scalar_t* dcl = dhl + (size_t)B * U;                           // [b * U + u]
    frnn_load_w_slice(Wsm, w_hh, G, H, j0, nu);
    for (int idx = tid; idx < B * nu; idx += nthr) {
        const int b = idx / nu;
        const int u = idx - b * nu;
        dhl[b * U + u] = dh[(size_t)b * H + j0 + u];
        dcl[b * U + u] = Cell::HAS_C ? dc[(size_t)b * H + j0 + u] : scalar_t(0);
    }
    __syncthreads();

    for (int s = T - 1; s >= 0; --s) {
        const int t = reverse ? T - 1 - s : s;
        const size_t in_base = (size_t)(reverse ? t + 1 : t) * B * H;
        const size_t out_base = (size_t)(reverse ? t : t + 1) * B * H;

        // 1. the cell backward for this block's (b, u) pairs
        for (int idx = tid; idx < B * nu; idx += nthr) {
            const int b = idx / nu;
            const int u = idx - b * nu;
            const int j = j0 + u;
            const size_t bj = (size_t)b * H + j;
            scalar_t dxv[G], dhv[G];
            if ((long long)t < lengths[b]) {
                scalar_t sv[FRNN_SAVE_LEN(S)];
                const scalar_t* srow = save + ((size_t)t * B + b) * ((size_t)S * H);
#pragma unroll
                for (int q = 0; q < S; ++q) sv[q] = srow[q * H + j];
                const scalar_t h = hs[in_base + bj];
                const scalar_t hn = hs[out_base + bj];
                const scalar_t c = Cell::HAS_C ? cs[in_base + bj] : scalar_t(0);
                const scalar_t cn = Cell::HAS_C ? cs[out_base + bj] : scalar_t(0);
                const scalar_t dhn = dhl[b * U + u] + dy[((size_t)t * B + b) * H + j];
                const scalar_t dcn = dcl[b * U + u];
                scalar_t dh_direct, dc_prev;
                Cell::bwd(sv, h, c, hn, cn, dhn, dcn, dxv, dhv, dh_direct, dc_prev);
                dhl[b * U + u] = dh_direct;
                if (Cell::HAS_C) dcl[b * U + u] = dc_prev;
            } else {
#pragma unroll
                for (int g = 0; g < G; ++g) {
                    dxv[g] = scalar_t(0);
                    dhv[g] = scalar_t(0);
                }
            }
            scalar_t* dxrow = dxg + ((size_t)t * B + b) * GH;
            scalar_t* dhrow = dhg + ((size_t)t * B + b) * GH;
#pragma unroll
            for (int g = 0; g < G; ++g) {
                dxrow[g * H + j] = dxv[g];
                if (Cell::SPLIT) dhrow[g * H + j] = dhv[g];
                dgl[(g * nu + u) * FRNN_MAXB + b] = dhv[g];
            }
        }
        __syncthreads();

        // 2. partial[s&1][blk][b][k] = sum over this block's rows rr of dhg[b, rr] * W_hh[rr, k]
        scalar_t* P = partial + ((size_t)(s & 1) * nblk + blockIdx.x) * ((size_t)B * H);
        const int R = G * nu;
        for (int k = tid; k < H; k += nthr) {
            scalar_t acc[FRNN_MAXB];
#pragma unroll
            for (int b = 0; b < FRNN_MAXB; ++b) acc[b] = scalar_t(0);
            for (int rr = 0; rr < R; ++rr) {
                const scalar_t w = Wsm[(size_t)rr * H + k];
                const scalar_t* d = dgl + rr * FRNN_MAXB;
                scalar_t dv[FRNN_MAXB];  // whole row, unpredicated: aligned vector loads
#pragma unroll
                for (int b = 0; b < FRNN_MAXB; ++b) dv[b] = d[b];
#pragma unroll
                for (int b = 0; b < FRNN_MAXB; ++b)
                    if (b < B) acc[b] += dv[b] * w;
            }
#pragma unroll
            for (int b = 0; b < FRNN_MAXB; ++b)
                if (b < B) P[(size_t)b * H + k] = acc[b];
        }

        frnn_grid_sync(barrier);

        // 3. dh[b, j] += sum over blocks of their partials, for this block's units;
        //    four outputs per warp at a time, lanes over blocks.
        const scalar_t* Pall = partial + (size_t)(s & 1) * nblk * ((size_t)B * H);
        const int nout = B * nu;
        for (int o0 = warp * 4; o0 < nout; o0 += nwarps * 4) {
            scalar_t a[4];
#pragma unroll
            for (int q = 0; q < 4; ++q) a[q] = scalar_t(0);
            for (int J = lane; J < nblk; J += 32) {
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const int o = o0 + q;
                    if (o < nout) {
                        const int b = o / nu;
                        const int u = o - b * nu;
                        a[q] += __ldcg(Pall + ((size_t)J * B + b) * H + j0 + u);
                    }
                }
            }
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const scalar_t v = frnn_warp_sum(a[q]);
                const int o = o0 + q;
                if (lane == 0 && o < nout) {
                    const int b = o / nu;
                    const int u = o - b * nu;
                    dhl[b * U + u] += v;
                }
            }
        }
        __syncthreads();
    }

    for (int idx = tid; idx < B * nu; idx += nthr) {
        const int b = idx / nu;
        const int u = idx - b * nu;
        dh[(size_t)b * H + j0 + u] = dhl[b * U + u];
        if (Cell::HAS_C) dc[(size_t)b * H + j0 + u] = dcl[b * U + u];
    }
}

#define FRNN_DEFINE_PERSIST_KERNELS(NAME, CELL)                                           \
    extern "C" __global__ void persist_fwd_##NAME(                                        \
        const scalar_t* __restrict__ xg, const scalar_t* __restrict__ w_hh,               \
        const scalar_t* __restrict__ b_ih, const scalar_t* __restrict__ b_hh,             \
        const long long* __restrict__ lengths, scalar_t* hs, scalar_t* cs, scalar_t* y,   \
        scalar_t* save, unsigned int* barrier, int write_save, int T, int B, int H,       \
        int U, int reverse) {                                                             \
        frnn_persist_fwd<CELL>(xg, w_hh, b_ih, b_hh, lengths, hs, cs, y, save, barrier,   \
                               write_save, T, B, H, U, reverse);                          \
    }                                                                                     \
    extern "C" __global__ void persist_bwd_##NAME(                                        \
        const scalar_t* __restrict__ w_hh, const long long* __restrict__ lengths,         \
        const scalar_t* __restrict__ hs, const scalar_t* __restrict__ cs,                 \
        const scalar_t* __restrict__ save, const scalar_t* __restrict__ dy, scalar_t* dh, \
        scalar_t* dc, scalar_t* dxg, scalar_t* dhg, scalar_t* partial,                    \
        unsigned int* barrier, int T, int B, int H, int U, int reverse) {                 \
        frnn_persist_bwd<CELL>(w_hh, lengths, hs, cs, save, dy, dh, dc, dxg, dhg,         \
                               partial, barrier, T, B, H, U, reverse);                    \
    }

FRNN_DEFINE_PERSIST_KERNELS(rnn_tanh, RnnTanhCell)
FRNN_DEFINE_PERSIST_KERNELS(rnn_relu, RnnReluCell)
FRNN_DEFINE_PERSIST_KERNELS(gru, GruCell)
FRNN_DEFINE_PERSIST_KERNELS(lstm, LstmCell)

#endif  // FASTRNN_PERSISTENT_CU
