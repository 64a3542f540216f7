// GRU cell, gates r, z, n (G = 3), PyTorch's form:
//   r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
//   z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
//   n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))
//   h' = (1 - z) * n + z * h
// Saved for backward (S = 4): r, z, n and hn_part = W_hn h + b_hn.
// The recurrent-side gradient differs from the input side in the n gate
// (dhg_n = dan * r), so dxg and dhg are separate buffers (SPLIT).
#include "common.cuh"

#ifndef FASTRNN_GRU_CU
#define FASTRNN_GRU_CU

struct GruCell {
    static constexpr int G = 3;
    static constexpr int S = 4;
    static constexpr bool HAS_C = false;
    static constexpr bool SPLIT = true;

    static __device__ __forceinline__ void fwd(const scalar_t* xin, const scalar_t* hin,
                                               scalar_t h, scalar_t c, scalar_t& hn,
                                               scalar_t& cn, scalar_t* save) {
        const scalar_t r = frnn_sigmoid(xin[0] + hin[0]);
        const scalar_t z = frnn_sigmoid(xin[1] + hin[1]);
        const scalar_t n = frnn_tanh(xin[2] + r * hin[2]);
        hn = (scalar_t(1) - z) * n + z * h;
        cn = c;
        save[0] = r;
        save[1] = z;
        save[2] = n;
        save[3] = hin[2];
    }
    static __device__ __forceinline__ void bwd(const scalar_t* save, scalar_t h, scalar_t c,
                                               scalar_t hn, scalar_t cn, scalar_t dhn,
                                               scalar_t dcn, scalar_t* dxg, scalar_t* dhg,
                                               scalar_t& dh_direct, scalar_t& dc_prev) {
        const scalar_t r = save[0], z = save[1], n = save[2], hn_part = save[3];
        const scalar_t dn = dhn * (scalar_t(1) - z);
        const scalar_t dz = dhn * (h - n);
        const scalar_t dan = dn * (scalar_t(1) - n * n);
        const scalar_t dar = dan * hn_part * r * (scalar_t(1) - r);
        const scalar_t daz = dz * z * (scalar_t(1) - z);
        dxg[0] = dar;
        dxg[1] = daz;
        dxg[2] = dan;
        dhg[0] = dar;
        dhg[1] = daz;
        dhg[2] = dan * r;
        dh_direct = dhn * z;
        dc_prev = scalar_t(0);
    }
};

#ifndef FASTRNN_CELLS_ONLY
FRNN_DEFINE_STEP_KERNELS(gru, GruCell)
#endif

#endif  // FASTRNN_GRU_CU
