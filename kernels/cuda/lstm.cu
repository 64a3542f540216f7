// LSTM cell, gates i, f, g, o (G = 4), PyTorch's form:
//   i, f, o = sigmoid(.), g = tanh(.)   (. = W_i* x + b_i* + W_h* h + b_h*)
//   c' = f * c + i * g,   h' = o * tanh(c')
// Saved for backward (S = 4): i, f, g, o; tanh(c') is recomputed from c'
// (kept in cs).  dxg and dhg are the same buffer.
#include "common.cuh"

#ifndef FASTRNN_LSTM_CU
#define FASTRNN_LSTM_CU

struct LstmCell {
    static constexpr int G = 4;
    static constexpr int S = 4;
    static constexpr bool HAS_C = true;
    static constexpr bool SPLIT = false;

    static __device__ __forceinline__ void fwd(const scalar_t* xin, const scalar_t* hin,
                                               scalar_t h, scalar_t c, scalar_t& hn,
                                               scalar_t& cn, scalar_t* save) {
        const scalar_t i = frnn_sigmoid(xin[0] + hin[0]);
        const scalar_t f = frnn_sigmoid(xin[1] + hin[1]);
        const scalar_t g = frnn_tanh(xin[2] + hin[2]);
        const scalar_t o = frnn_sigmoid(xin[3] + hin[3]);
        cn = f * c + i * g;
        hn = o * frnn_tanh(cn);
        save[0] = i;
        save[1] = f;
        save[2] = g;
        save[3] = o;
    }
    static __device__ __forceinline__ void bwd(const scalar_t* save, scalar_t h, scalar_t c,
                                               scalar_t hn, scalar_t cn, scalar_t dhn,
                                               scalar_t dcn, scalar_t* dxg, scalar_t* dhg,
                                               scalar_t& dh_direct, scalar_t& dc_prev) {
        const scalar_t i = save[0], f = save[1], g = save[2], o = save[3];
        const scalar_t tc = frnn_tanh(cn);
        const scalar_t dc = dcn + dhn * o * (scalar_t(1) - tc * tc);
        const scalar_t d_o = dhn * tc;
        const scalar_t d_i = dc * g;
        const scalar_t d_g = dc * i;
        const scalar_t d_f = dc * c;
        dxg[0] = d_i * i * (scalar_t(1) - i);
        dxg[1] = d_f * f * (scalar_t(1) - f);
        dxg[2] = d_g * (scalar_t(1) - g * g);
        dxg[3] = d_o * o * (scalar_t(1) - o);
#pragma unroll
        for (int q = 0; q < 4; ++q) dhg[q] = dxg[q];
        dh_direct = scalar_t(0);
        dc_prev = dc * f;
    }
};

#ifndef FASTRNN_CELLS_ONLY
FRNN_DEFINE_STEP_KERNELS(lstm, LstmCell)
#endif

#endif  // FASTRNN_LSTM_CU
