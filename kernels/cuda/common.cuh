// fastrnn CUDA kernels: shared math, scalar type, grid barrier and the
// general-path step kernels (templated on the cell).
//
// Shapes (T time, B batch, H hidden, G gates: 1 rnn, 3 gru, 4 lstm,
// S saved scalars per unit: 0 rnn, 4 gru, 4 lstm), all row-major:
//   xg    (T, B, G*H)   input projection x W_ih^T, no bias (one GEMM)
//   hg    (B, G*H)      recurrent projection h W_hh^T of one step, no bias
//   hs    (T+1, B, H)   states.  Forward direction: hs[t] enters time t and
//                       hs[t+1] leaves it (h0 = hs[0], h_n = hs[T]).
//                       reverse: hs[t+1] enters time t, hs[t] leaves it
//                       (h0 = hs[T], h_n = hs[0]).  So, either way, the state
//                       entering time t for all t is one contiguous (T, B, H)
//                       block, which the dW_hh GEMM reads as (T*B, H).
//   cs    (T+1, B, H)   LSTM cell states, same layout
//   y     (T, B, H)     y[t] = h' at valid steps, 0 at t >= lengths[b]
//   save  (T, B, S*H)   what backward needs (activated gates), save[t][b][s*H + j]
//   dxg, dhg (T, B, G*H) gradients of the input-side / recurrent-side
//                       pre-activations (the same buffer unless Cell::SPLIT)
//
// The scalar type is chosen at compile time with -DFRNN_SCALAR=float|double
// (the loader compiles one module per dtype), kernels are extern "C".
// This file is NVRTC-compatible: no host headers.
#ifndef FASTRNN_COMMON_CUH
#define FASTRNN_COMMON_CUH

#ifndef FRNN_SCALAR
#define FRNN_SCALAR float
#endif
typedef FRNN_SCALAR scalar_t;

// Largest batch of the persistent kernels (accumulators live in registers).
#define FRNN_MAXB 16

// ------------------------------------------------------------------ math
template <typename T> struct Act;

template <> struct Act<float> {
    static __device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
    static __device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
    static __device__ __forceinline__ float relu(float x) { return x > 0.0f ? x : 0.0f; }
};

template <> struct Act<double> {
    static __device__ __forceinline__ double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
    static __device__ __forceinline__ double tanh_(double x) { return tanh(x); }
    static __device__ __forceinline__ double relu(double x) { return x > 0.0 ? x : 0.0; }
};

// exp(-x) overflows to inf for very negative x, and 1/(1+inf) = 0: no NaN.
__device__ __forceinline__ scalar_t frnn_sigmoid(scalar_t x) { return Act<scalar_t>::sigmoid(x); }
__device__ __forceinline__ scalar_t frnn_tanh(scalar_t x) { return Act<scalar_t>::tanh_(x); }
__device__ __forceinline__ scalar_t frnn_relu(scalar_t x) { return Act<scalar_t>::relu(x); }

__device__ __forceinline__ scalar_t frnn_warp_sum(scalar_t v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Dynamic shared memory, declared once for every kernel of a module.
__device__ __forceinline__ unsigned char* frnn_dyn_smem() {
    extern __shared__ __align__(16) unsigned char frnn_smem[];
    return frnn_smem;
}

// ------------------------------------------------------------------ grid barrier
// Barrier over the whole grid for kernels launched cooperatively (all blocks
// co-resident).  *bar must hold 0 in its low 31 bits at launch.  Block 0 adds
// 0x80000000 - (nblocks - 1), every other block adds 1: the top bit flips
// exactly when the last block arrives (the scheme of cooperative_groups'
// grid.sync, written out so that no header is needed under NVRTC).  Data
// written before the barrier by other blocks must be read after it with
// __ldcg (L2, never a stale L1 line).
__device__ __forceinline__ void frnn_grid_sync(unsigned int* bar) {
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned int nb = 1u;
        if (blockIdx.x == 0) nb = 0x80000000u - (gridDim.x - 1u);
        __threadfence();
        unsigned int old = atomicAdd(bar, nb);
        volatile unsigned int* vbar = bar;
        while (((old ^ *vbar) & 0x80000000u) == 0u) {
            __nanosleep(32);
        }
        __threadfence();
    }
    __syncthreads();
}

// ------------------------------------------------------------------ cells
// Each cell (rnn.cu, gru.cu, lstm.cu) is a struct with
//   G, S, HAS_C, SPLIT (dhg differs from dxg)
//   fwd(xin[G], hin[G], h, c, hn&, cn&, save[S])
//        xin[g] = (W_ih x)_g + b_ih_g, hin[g] = (W_hh h)_g + b_hh_g
//   bwd(save[S], h, c, hn, cn, dhn, dcn, dxg[G], dhg[G], dh_direct&, dc_prev&)
//        h, c: state entering the step; hn, cn: state it produced;
//        dhn: gradient into hn (carried dh + dy); dcn: into cn.
// The general-path kernels below apply them to one (b, j) element each.

#define FRNN_SAVE_LEN(S) ((S) > 0 ? (S) : 1)

// One forward step at time t; one thread per (b, j), grid covers B*H.
template <class Cell>
__device__ __forceinline__ void frnn_fwd_step(
    const scalar_t* __restrict__ xg, const scalar_t* __restrict__ hg,
    const scalar_t* __restrict__ b_ih, const scalar_t* __restrict__ b_hh,
    const long long* __restrict__ lengths,
    scalar_t* hs, scalar_t* cs, scalar_t* __restrict__ y, scalar_t* __restrict__ save,
    int write_save, int t, int B, int H, int reverse)
{
    constexpr int G = Cell::G;
    constexpr int S = Cell::S;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)B * H) return;
    const int b = (int)(idx / H);
    const int j = (int)(idx - (long long)b * H);
    const size_t GH = (size_t)G * H;
    const size_t in_off = ((size_t)(reverse ? t + 1 : t) * B + b) * H + j;
    const size_t out_off = ((size_t)(reverse ? t : t + 1) * B + b) * H + j;
    const bool valid = (long long)t < lengths[b];

    const scalar_t* xrow = xg + ((size_t)t * B + b) * GH;
    const scalar_t* hrow = hg + (size_t)b * GH;
    scalar_t xin[G], hin[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        xin[g] = xrow[g * H + j] + b_ih[g * H + j];
        hin[g] = hrow[g * H + j] + b_hh[g * H + j];
    }
    const scalar_t h = hs[in_off];
    const scalar_t c = Cell::HAS_C ? cs[in_off] : scalar_t(0);
    scalar_t hn, cn, sv[FRNN_SAVE_LEN(S)];
    Cell::fwd(xin, hin, h, c, hn, cn, sv);
    hs[out_off] = valid ? hn : h;
    if (Cell::HAS_C) cs[out_off] = valid ? cn : c;
    y[((size_t)t * B + b) * H + j] = valid ? hn : scalar_t(0);
    if (write_save) {
        scalar_t* srow = save + ((size_t)t * B + b) * ((size_t)S * H);
#pragma unroll
        for (int s = 0; s < S; ++s) srow[s * H + j] = sv[s];
    }
}

// One backward step at time t; one thread per (b, j).  dh, dc (B, H) hold the
// gradient flowing into the state that step t produced; on exit dh holds the
// direct part of the gradient into the state entering step t (the caller then
// adds dhg[t] @ W_hh with a GEMM; rows past lengths[b] get dhg = 0, so they
// carry dh unchanged), dc the full gradient into c.
template <class Cell>
__device__ __forceinline__ void frnn_bwd_step(
    const scalar_t* __restrict__ hs, const scalar_t* __restrict__ cs,
    const scalar_t* __restrict__ save, const scalar_t* __restrict__ dy,
    const long long* __restrict__ lengths,
    scalar_t* dh, scalar_t* dc, scalar_t* dxg, scalar_t* dhg,
    int t, int B, int H, int reverse)
{
    constexpr int G = Cell::G;
    constexpr int S = Cell::S;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)B * H) return;
    const int b = (int)(idx / H);
    const int j = (int)(idx - (long long)b * H);
    const size_t GH = (size_t)G * H;
    scalar_t* dxrow = dxg + ((size_t)t * B + b) * GH;
    scalar_t* dhrow = dhg + ((size_t)t * B + b) * GH;
    if (!((long long)t < lengths[b])) {
#pragma unroll
        for (int g = 0; g < G; ++g) {
            dxrow[g * H + j] = scalar_t(0);
            if (Cell::SPLIT) dhrow[g * H + j] = scalar_t(0);
        }
        return;  // dh, dc carried unchanged
    }
    const size_t in_off = ((size_t)(reverse ? t + 1 : t) * B + b) * H + j;
    const size_t out_off = ((size_t)(reverse ? t : t + 1) * B + b) * H + j;
    const size_t bj = (size_t)b * H + j;
    scalar_t sv[FRNN_SAVE_LEN(S)];
    const scalar_t* srow = save + ((size_t)t * B + b) * ((size_t)S * H);
#pragma unroll
    for (int s = 0; s < S; ++s) sv[s] = srow[s * H + j];
    const scalar_t h = hs[in_off];
    const scalar_t hn = hs[out_off];
    const scalar_t c = Cell::HAS_C ? cs[in_off] : scalar_t(0);
    const scalar_t cn = Cell::HAS_C ? cs[out_off] : scalar_t(0);
    const scalar_t dhn = dh[bj] + dy[((size_t)t * B + b) * H + j];
    const scalar_t dcn = Cell::HAS_C ? dc[bj] : scalar_t(0);
    scalar_t dxv[G], dhv[G], dh_direct, dc_prev;
    Cell::bwd(sv, h, c, hn, cn, dhn, dcn, dxv, dhv, dh_direct, dc_prev);
#pragma unroll
    for (int g = 0; g < G; ++g) {
        dxrow[g * H + j] = dxv[g];
        if (Cell::SPLIT) dhrow[g * H + j] = dhv[g];
    }
    dh[bj] = dh_direct;
    if (Cell::HAS_C) dc[bj] = dc_prev;
}

// Wrappers: every cell file instantiates the two general-path kernels with
// FRNN_DEFINE_STEP_KERNELS(name, Cell) unless FASTRNN_CELLS_ONLY is defined
// (persistent.cu includes the cells for their math only).
#define FRNN_DEFINE_STEP_KERNELS(NAME, CELL)                                              \
    extern "C" __global__ void NAME##_fwd_step(                                           \
        const scalar_t* __restrict__ xg, const scalar_t* __restrict__ hg,                 \
        const scalar_t* __restrict__ b_ih, const scalar_t* __restrict__ b_hh,             \
        const long long* __restrict__ lengths, scalar_t* hs, scalar_t* cs,                \
        scalar_t* __restrict__ y, scalar_t* __restrict__ save, int write_save, int t,     \
        int B, int H, int reverse) {                                                      \
        frnn_fwd_step<CELL>(xg, hg, b_ih, b_hh, lengths, hs, cs, y, save, write_save, t,  \
                            B, H, reverse);                                               \
    }                                                                                     \
    extern "C" __global__ void NAME##_bwd_step(                                           \
        const scalar_t* __restrict__ hs, const scalar_t* __restrict__ cs,                 \
        const scalar_t* __restrict__ save, const scalar_t* __restrict__ dy,               \
        const long long* __restrict__ lengths, scalar_t* dh, scalar_t* dc, scalar_t* dxg, \
        scalar_t* dhg, int t, int B, int H, int reverse) {                                \
        frnn_bwd_step<CELL>(hs, cs, save, dy, lengths, dh, dc, dxg, dhg, t, B, H,         \
                            reverse);                                                     \
    }

#endif  // FASTRNN_COMMON_CUH
