// A 1×1 convolution in the precision its weights carry: fp32 (w), int8 (q) or bf16 (wb).
#include "kernels.h"

namespace mn {

void conv1x1(const MnConv& cv, int M, int N, int K, const float* A, int lda, const uint8_t* Aq, float* C, int ldc,
             const float* R, int ldr, int act, int p0, int p1, uint8_t* qbuf) {
  if (p0 >= p1) return;
  if (cv.wb) {
    gemm_bf16(M, N, K, A, lda, cv, C, ldc, R, ldr, act, p0, p1);
  } else if (cv.q) {
    if (!Aq) Aq = input_codes(cv, A, lda, M, K, qbuf);
    gemm_int8(M, N, K, Aq, K, cv, C, ldc, R, ldr, act, p0, p1);
  } else {
    gemm_fp32(M, N, K, A, lda, cv.w, cv.bias, C, ldc, R, ldr, act, p0, p1);
  }
}

}  // namespace mn
