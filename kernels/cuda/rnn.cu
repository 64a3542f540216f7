// Elman RNN cells, one gate (G = 1):
//   rnn_tanh: h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
//   rnn_relu: h' = relu(W_ih x + b_ih + W_hh h + b_hh)
// Nothing is saved for backward (S = 0): h' is the state the step produced.
#include "common.cuh"

#ifndef FASTRNN_RNN_CU
#define FASTRNN_RNN_CU

struct RnnTanhCell {
    static constexpr int G = 1;
    static constexpr int S = 0;
    static constexpr bool HAS_C = false;
    static constexpr bool SPLIT = false;

    static __device__ __forceinline__ void fwd(const scalar_t* xin, const scalar_t* hin,
                                               scalar_t h, scalar_t c, scalar_t& hn,
                                               scalar_t& cn, scalar_t* save) {
        hn = frnn_tanh(xin[0] + hin[0]);
        cn = c;
    }
    static __device__ __forceinline__ void bwd(const scalar_t* save, scalar_t h, scalar_t c,
                                               scalar_t hn, scalar_t cn, scalar_t dhn,
                                               scalar_t dcn, scalar_t* dxg, scalar_t* dhg,
                                               scalar_t& dh_direct, scalar_t& dc_prev) {
        const scalar_t da = dhn * (scalar_t(1) - hn * hn);
        dxg[0] = da;
        dhg[0] = da;
        dh_direct = scalar_t(0);
        dc_prev = scalar_t(0);
    }
};

struct RnnReluCell {
    static constexpr int G = 1;
    static constexpr int S = 0;
    static constexpr bool HAS_C = false;
    static constexpr bool SPLIT = false;

    static __device__ __forceinline__ void fwd(const scalar_t* xin, const scalar_t* hin,
                                               scalar_t h, scalar_t c, scalar_t& hn,
                                               scalar_t& cn, scalar_t* save) {
        hn = frnn_relu(xin[0] + hin[0]);
        cn = c;
    }
    static __device__ __forceinline__ void bwd(const scalar_t* save, scalar_t h, scalar_t c,
                                               scalar_t hn, scalar_t cn, scalar_t dhn,
                                               scalar_t dcn, scalar_t* dxg, scalar_t* dhg,
                                               scalar_t& dh_direct, scalar_t& dc_prev) {
        const scalar_t da = hn > scalar_t(0) ? dhn : scalar_t(0);
        dxg[0] = da;
        dhg[0] = da;
        dh_direct = scalar_t(0);
        dc_prev = scalar_t(0);
    }
};

#ifndef FASTRNN_CELLS_ONLY
FRNN_DEFINE_STEP_KERNELS(rnn_tanh, RnnTanhCell)
FRNN_DEFINE_STEP_KERNELS(rnn_relu, RnnReluCell)
#endif

#endif  // FASTRNN_RNN_CU
