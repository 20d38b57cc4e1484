// Native CPU kernels for the hyperspherical map u(theta) of GmP, called through the XLA FFI.
//
// One row theta_0 .. theta_{K-1} (K angles) maps to u_0 .. u_K (K + 1 components), with
// s_k = sin theta_k, c_k = cos theta_k and the prefix products P_{-1} = 1, P_k = P_{k-1} s_k:
//
//   forward   u_k = P_{k-1} c_k (k < K),   u_K = P_{K-1};
//   tangent   dP_{-1} = 0,  dP_k = s_k dP_{k-1} + u_k t_k,  du_k = c_k dP_{k-1} - P_k t_k,  du_K = dP_{K-1};
//   backward  R_{K-1} = g_K,  dtheta_k = P_{k-1} (c_k R_k - s_k g_k),  R_{k-1} = g_k c_k + s_k R_k.
//
// With `renormalize` the forward returns scale * u with scale = 1 / ||u|| per row, and both
// derivatives treat that scale as a constant (it is 1 in exact arithmetic): the tangent is
// scaled by it and the backward scales g by it. Each kernel recomputes sin, cos, the prefix
// products and the scale from theta, so the only residual a backward pass needs is theta.
// Nothing divides by a sine: values and derivatives are exact at theta_k in {0, pi}.
//
// Speed: sin and cos of a whole row come from one shared range reduction and two short
// polynomials in a branch-free loop that the compiler vectorises (one clone per x86-64 level,
// picked at load time, so the binary never assumes the build machine's CPU). The recurrences are
// sequential along a row, so kRows rows are advanced together: kRows independent dependency
// chains keep the multipliers busy instead of waiting on one chain's latency. Blocks of rows
// are spread over XLA's intra-op thread pool; the handlers are asynchronous and return a future.
//
// Layout: theta (M, K), u and du (M, K + 1), g (M, K + 1), t and dtheta (M, K), row-major, where
// M is the product of the leading dimensions.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GMP_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GMP_CLONES
#endif

constexpr int kRows = 8;  // rows advanced together through a recurrence

// ---------------------------------------------------------------------------------------------
// sin and cos of a row
// ---------------------------------------------------------------------------------------------

// |x| beyond which the float32 reduction below loses accuracy; such rows use double libm.
constexpr float kF32Range = 8192.0f;

// (sin x, cos x) for n floats, ~1e-7 absolute for |x| <= kF32Range: x = j pi/2 + r with a
// three-part Cody-Waite reduction, Cephes minimax polynomials on [-pi/4, pi/4], and the quadrant
// j mod 4 applied by selects. Returns whether some |x| is out of that range (or NaN), so that the
// caller can redo the row.
GMP_CLONES bool sincos_f32(const float* __restrict x, float* __restrict s, float* __restrict c, int64_t n) {
  constexpr float kTwoOverPi = 0.636619772367581343f;
  constexpr float kPio2_1 = 1.5703125f;
  constexpr float kPio2_2 = 4.837512969970703125e-4f;
  constexpr float kPio2_3 = 7.54978995489188216e-8f;
  int32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float xi = x[i];
    const float j = __builtin_rintf(xi * kTwoOverPi);
    const int32_t q = static_cast<int32_t>(j);
    const float r = ((xi - j * kPio2_1) - j * kPio2_2) - j * kPio2_3;
    const float z = r * r;
    const float sp = r + r * z * (-1.6666654611e-1f + z * (8.3321608736e-3f + z * -1.9515295891e-4f));
    const float cp =
        (1.0f - 0.5f * z) + z * z * (4.166664568298827e-2f + z * (-1.388731625493765e-3f + z * 2.443315711809948e-5f));
    const bool odd = q & 1;
    float sv = odd ? cp : sp;
    float cv = odd ? sp : cp;
    sv = (q & 2) ? -sv : sv;
    cv = ((q + 1) & 2) ? -cv : cv;
    s[i] = sv;
    c[i] = cv;
    bad |= !(__builtin_fabsf(xi) <= kF32Range);
  }
  return bad != 0;
}

void sincos_row(const float* x, float* s, float* c, int64_t n) {
  if (sincos_f32(x, s, c, n)) {  // large or non-finite angles: exact reduction in double
    for (int64_t i = 0; i < n; ++i) {
      s[i] = static_cast<float>(std::sin(static_cast<double>(x[i])));
      c[i] = static_cast<float>(std::cos(static_cast<double>(x[i])));
    }
  }
}

void sincos_row(const double* x, double* s, double* c, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    s[i] = std::sin(x[i]);
    c[i] = std::cos(x[i]);
  }
}

// ---------------------------------------------------------------------------------------------
// Row-block kernels: `nr <= kRows` rows starting at the given pointers, K angles each.
// s and c are per-thread scratch of kRows * K values (row r at offset r * K).
// ---------------------------------------------------------------------------------------------

template <typename T>
GMP_CLONES void scale_row(T* row, int64_t n, T scale) {
  for (int64_t i = 0; i < n; ++i) row[i] *= scale;
}

template <typename T>
GMP_CLONES T sumsq_row(const T* row, int64_t n) {
  T acc = 0;
  for (int64_t i = 0; i < n; ++i) acc += row[i] * row[i];
  return acc;
}

template <typename T>
void forward_block(const T* theta, T* u, int nr, int64_t K, bool renorm, T* s, T* c) {
  for (int r = 0; r < nr; ++r) sincos_row(theta + r * K, s + r * K, c + r * K, K);
  T p[kRows];
  for (int r = 0; r < kRows; ++r) p[r] = T(1);
  const int64_t ldu = K + 1;
  if (nr == kRows) {
    for (int64_t k = 0; k < K; ++k) {
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) {
        u[r * ldu + k] = p[r] * c[r * K + k];
        p[r] *= s[r * K + k];
      }
    }
  } else {
    for (int64_t k = 0; k < K; ++k) {
      for (int r = 0; r < nr; ++r) {
        u[r * ldu + k] = p[r] * c[r * K + k];
        p[r] *= s[r * K + k];
      }
    }
  }
  for (int r = 0; r < nr; ++r) {
    u[r * ldu + K] = p[r];
    if (renorm) scale_row(u + r * ldu, ldu, T(1) / std::sqrt(sumsq_row(u + r * ldu, ldu)));
  }
}

// Exclusive prefix products P_{k-1} of each row into `pe` (kRows * K scratch); returns the
// renormalisation scale of each row in `scale` (1 when !renorm), from sum u_k^2 accumulated on
// the way (u_k = P_{k-1} c_k, u_K = P_{K-1}).
template <typename T>
void prefix_block(int nr, int64_t K, bool renorm, const T* s, const T* c, T* pe, T* scale) {
  T p[kRows], acc[kRows];
  for (int r = 0; r < kRows; ++r) p[r] = T(1), acc[r] = T(0);
  for (int64_t k = 0; k < K; ++k) {
    for (int r = 0; r < nr; ++r) {
      const T uk = p[r] * c[r * K + k];
      acc[r] += uk * uk;
      pe[r * K + k] = p[r];
      p[r] *= s[r * K + k];
    }
  }
  for (int r = 0; r < nr; ++r) scale[r] = renorm ? T(1) / std::sqrt(acc[r] + p[r] * p[r]) : T(1);
}

template <typename T>
void backward_block(const T* theta, const T* g, T* dtheta, int nr, int64_t K, bool renorm, T* s, T* c, T* pe) {
  for (int r = 0; r < nr; ++r) sincos_row(theta + r * K, s + r * K, c + r * K, K);
  T scale[kRows];
  prefix_block(nr, K, renorm, s, c, pe, scale);
  const int64_t ldg = K + 1;
  T R[kRows];
  for (int r = 0; r < nr; ++r) R[r] = g[r * ldg + K] * scale[r];
  for (int64_t k = K - 1; k >= 0; --k) {
    for (int r = 0; r < nr; ++r) {
      const T gk = g[r * ldg + k] * scale[r];
      const T sk = s[r * K + k], ck = c[r * K + k];
      dtheta[r * K + k] = pe[r * K + k] * (ck * R[r] - sk * gk);
      R[r] = gk * ck + sk * R[r];
    }
  }
}

template <typename T>
void tangent_block(const T* theta, const T* t, T* du, int nr, int64_t K, bool renorm, T* s, T* c) {
  for (int r = 0; r < nr; ++r) sincos_row(theta + r * K, s + r * K, c + r * K, K);
  const int64_t ldu = K + 1;
  T p[kRows], dp[kRows], acc[kRows];
  for (int r = 0; r < kRows; ++r) p[r] = T(1), dp[r] = T(0), acc[r] = T(0);
  for (int64_t k = 0; k < K; ++k) {
    for (int r = 0; r < nr; ++r) {
      const T sk = s[r * K + k], ck = c[r * K + k], tk = t[r * K + k];
      const T uk = p[r] * ck;
      const T pk = p[r] * sk;
      acc[r] += uk * uk;
      du[r * ldu + k] = ck * dp[r] - pk * tk;
      dp[r] = sk * dp[r] + uk * tk;
      p[r] = pk;
    }
  }
  for (int r = 0; r < nr; ++r) {
    du[r * ldu + K] = dp[r];
    if (renorm) scale_row(du + r * ldu, ldu, T(1) / std::sqrt(acc[r] + p[r] * p[r]));
  }
}

// ---------------------------------------------------------------------------------------------
// Parallel driver: rows split into contiguous chunks of whole row blocks, one task per chunk.
// ---------------------------------------------------------------------------------------------

// Elements per task below which splitting does not pay for the scheduling.
constexpr int64_t kMinWorkPerTask = 1 << 16;

template <typename BlockFn>
ffi::Future parallel_rows(ffi::ThreadPool& pool, int64_t M, int64_t K, int scratch_arrays, BlockFn block) {
  const int64_t blocks = (M + kRows - 1) / kRows;
  int64_t tasks = std::max<int64_t>(1, pool.num_threads());
  tasks = std::min<int64_t>(tasks, std::max<int64_t>(1, (M * K) / kMinWorkPerTask));
  tasks = std::min<int64_t>(tasks, std::max<int64_t>(blocks, 1));
  auto run = [=](int64_t i) {
    const int64_t b0 = blocks * i / tasks, b1 = blocks * (i + 1) / tasks;
    using T = typename BlockFn::value_type;
    std::vector<T> scratch(static_cast<size_t>(scratch_arrays) * kRows * std::max<int64_t>(K, 1));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kRows;
      const int nr = static_cast<int>(std::min<int64_t>(kRows, M - r0));
      block(r0, nr, scratch.data());
    }
  };
  ffi::CountDownPromise promise(tasks);
  ffi::Future future(promise);
  for (int64_t i = 1; i < tasks; ++i) {
    pool.Schedule([run, i, promise]() mutable {
      run(i);
      promise.CountDown();
    });
  }
  run(0);
  promise.CountDown();
  return future;
}

template <typename T>
struct Forward {
  using value_type = T;
  const T* theta;
  T* u;
  int64_t K;
  bool renorm;
  void operator()(int64_t r0, int nr, T* scratch) const {
    forward_block(theta + r0 * K, u + r0 * (K + 1), nr, K, renorm, scratch, scratch + kRows * K);
  }
};

template <typename T>
struct Backward {
  using value_type = T;
  const T* theta;
  const T* g;
  T* dtheta;
  int64_t K;
  bool renorm;
  void operator()(int64_t r0, int nr, T* scratch) const {
    backward_block(theta + r0 * K, g + r0 * (K + 1), dtheta + r0 * K, nr, K, renorm, scratch, scratch + kRows * K,
                   scratch + 2 * kRows * K);
  }
};

template <typename T>
struct Tangent {
  using value_type = T;
  const T* theta;
  const T* t;
  T* du;
  int64_t K;
  bool renorm;
  void operator()(int64_t r0, int nr, T* scratch) const {
    tangent_block(theta + r0 * K, t + r0 * K, du + r0 * (K + 1), nr, K, renorm, scratch, scratch + kRows * K);
  }
};

// M and K of a (..., K) buffer.
template <typename B>
std::pair<int64_t, int64_t> rows_and_angles(const B& b) {
  auto dims = b.dimensions();
  const int64_t K = dims.size() == 0 ? 1 : dims.back();
  int64_t M = 1;
  for (size_t i = 0; i + 1 < dims.size(); ++i) M *= dims[i];
  return {M, K};
}

template <ffi::DataType D>
ffi::Future ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<D> theta, ffi::ResultBuffer<D> u, int32_t renorm) {
  using T = ffi::NativeType<D>;
  auto [M, K] = rows_and_angles(theta);
  return parallel_rows(pool, M, K, 2, Forward<T>{theta.typed_data(), u->typed_data(), K, renorm != 0});
}

template <ffi::DataType D>
ffi::Future BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<D> theta, ffi::Buffer<D> g, ffi::ResultBuffer<D> dtheta,
                         int32_t renorm) {
  using T = ffi::NativeType<D>;
  auto [M, K] = rows_and_angles(theta);
  return parallel_rows(pool, M, K, 3,
                       Backward<T>{theta.typed_data(), g.typed_data(), dtheta->typed_data(), K, renorm != 0});
}

template <ffi::DataType D>
ffi::Future TangentImpl(ffi::ThreadPool pool, ffi::Buffer<D> theta, ffi::Buffer<D> t, ffi::ResultBuffer<D> du,
                        int32_t renorm) {
  using T = ffi::NativeType<D>;
  auto [M, K] = rows_and_angles(theta);
  return parallel_rows(pool, M, K, 2, Tangent<T>{theta.typed_data(), t.typed_data(), du->typed_data(), K, renorm != 0});
}

}  // namespace

#define GMP_FWD(NAME, D)                                                                                          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, ForwardImpl<D>,                                                             \
                                ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<D>>().Ret<ffi::Buffer<D>>() \
                                    .Attr<int32_t>("renormalize"));
#define GMP_BINARY(NAME, IMPL, D)                                                          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, IMPL<D>,                                             \
                                ffi::Ffi::Bind()                                           \
                                    .Ctx<ffi::ThreadPool>()                                \
                                    .Arg<ffi::Buffer<D>>()                                 \
                                    .Arg<ffi::Buffer<D>>()                                 \
                                    .Ret<ffi::Buffer<D>>()                                 \
                                    .Attr<int32_t>("renormalize"));

GMP_FWD(GmpUnitForwardF32, ffi::F32)
GMP_FWD(GmpUnitForwardF64, ffi::F64)
GMP_BINARY(GmpUnitBackwardF32, BackwardImpl, ffi::F32)
GMP_BINARY(GmpUnitBackwardF64, BackwardImpl, ffi::F64)
GMP_BINARY(GmpUnitTangentF32, TangentImpl, ffi::F32)
GMP_BINARY(GmpUnitTangentF64, TangentImpl, ffi::F64)

// The FFI API version this library was compiled against, checked by the loader before registering.
extern "C" int gmpjax_ffi_api_version() { return XLA_FFI_API_MAJOR * 1000 + XLA_FFI_API_MINOR; }
