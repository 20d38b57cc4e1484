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
// Speed: the recurrences are sequential along a row, so a block of rows (one SIMD register
// wide) is advanced together, one vector operation per angle, on tiles transposed into a small
// lane-major scratch (the large arrays are only read and written contiguously, row by row). sin
// and cos come from one shared range reduction and two short polynomials in a branch-free loop
// over the whole tile. Every kernel is compiled once per x86-64 level (v4 = AVX-512, v3 = AVX2 +
// FMA, baseline) and the loader picks the clone for the CPU it runs on, so the binary never
// assumes the build machine's CPU. Blocks of rows are spread over XLA's intra-op thread pool;
// the handlers are asynchronous and return a future.
//
// Layout: theta (M, K), u and du (M, K + 1), g (M, K + 1), t and dtheta (M, K), row-major, where
// M is the product of the leading dimensions.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GMP_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GMP_CLONES
#endif

// ---------------------------------------------------------------------------------------------
// sin and cos of a row
// ---------------------------------------------------------------------------------------------

// |x| beyond which the float32 reduction below loses accuracy; such tiles use double libm.
constexpr float kF32Range = 8192.0f;

// (sin x, cos x) for n floats, ~1e-7 absolute for |x| <= kF32Range: x = j pi/2 + r with a
// three-part Cody-Waite reduction, Cephes minimax polynomials on [-pi/4, pi/4], and the quadrant
// j mod 4 applied by selects. Returns whether some |x| is out of that range (or NaN), so that the
// caller can redo the tile exactly. Inlined into each clone, so it is vectorised for its ISA.
__attribute__((always_inline)) inline bool sincos_poly(const float* __restrict x, float* __restrict s,
                                                        float* __restrict c, int64_t n) {
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

__attribute__((always_inline)) inline void sincos_tile(const float* x, float* s, float* c, int64_t n) {
  if (sincos_poly(x, s, c, n)) {  // large or non-finite angles: exact reduction in double
    for (int64_t i = 0; i < n; ++i) {
      s[i] = static_cast<float>(std::sin(static_cast<double>(x[i])));
      c[i] = static_cast<float>(std::cos(static_cast<double>(x[i])));
    }
  }
}

__attribute__((always_inline)) inline void sincos_tile(const double* x, double* s, double* c, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    s[i] = std::sin(x[i]);
    c[i] = std::cos(x[i]);
  }
}

// ---------------------------------------------------------------------------------------------
// Row-block kernels. A block is L rows (L = one SIMD register of T: 16 floats or 8 doubles on
// AVX-512), processed in angle tiles of kTile. Each tile of a row-major input is transposed into
// a small "lane" layout x[k][r] (angle k, row r), so that one step of a recurrence is one vector
// operation over the L rows and every sin/cos of the tile is one contiguous loop; results are
// transposed back row by row, so the large arrays are only read and written contiguously. Rows
// past the end of the array (nr < L) are lanes of zeros that are never written back.
// ---------------------------------------------------------------------------------------------

constexpr int64_t kTile = 128;  // angles per tile: a few (kTile x L) scratch tiles stay in L1

template <typename T>
constexpr int Lanes() {
  return 64 / sizeof(T);
}

// One SIMD register of T as a GCC vector (lowered to the clone's ISA: one zmm on AVX-512).
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef double v8d __attribute__((vector_size(64)));
typedef int64_t v8l __attribute__((vector_size(64)));
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  using V = v16f;
  using I = v16i;
};
template <>
struct Vec<double> {
  using V = v8d;
  using I = v8l;
};

// In-register transpose of an L x L block held as L vectors: at each scale b = L/2 .. 1, rows i
// and i + b swap their off-diagonal b x b sub-blocks (two 2-input shuffles per row pair).
template <typename T>
__attribute__((always_inline)) inline void transpose(typename Vec<T>::V* v) {
  using V = typename Vec<T>::V;
  using I = typename Vec<T>::I;
  constexpr int L = Lanes<T>();
#pragma GCC unroll 8
  for (int b = L / 2; b >= 1; b /= 2) {
    I lo, hi;
    for (int l = 0; l < L; ++l) {
      lo[l] = (l & b) ? L + l - b : l;
      hi[l] = (l & b) ? L + l : l + b;
    }
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) {
      if (i & b) continue;
      const V a = v[i], c = v[i + b];
      v[i] = __builtin_shuffle(a, c, lo);
      v[i + b] = __builtin_shuffle(a, c, hi);
    }
  }
}

// dst[k][r] = src[r * ld + k] for k < tk, r < nr; zero lanes r >= nr.
template <typename T, int L>
__attribute__((always_inline)) inline void to_lanes(const T* src, int64_t ld, int nr, int64_t tk, T* dst) {
  using V = typename Vec<T>::V;
  int64_t kb = 0;
  for (; kb + L <= tk; kb += L) {
    V v[L];
    for (int r = 0; r < L; ++r) {
      if (r < nr) {
        std::memcpy(&v[r], src + r * ld + kb, sizeof(V));
      } else {
        v[r] = V{};
      }
    }
    transpose<T>(v);
    for (int i = 0; i < L; ++i) std::memcpy(dst + (kb + i) * L, &v[i], sizeof(V));
  }
  for (int r = 0; r < L; ++r)
    for (int64_t k = kb; k < tk; ++k) dst[k * L + r] = r < nr ? src[r * ld + k] : T(0);
}

// dst[r * ld + k] = scale[r] * src[k][r] for k < tk, r < nr.
template <typename T, int L>
__attribute__((always_inline)) inline void from_lanes(const T* src, int nr, int64_t tk, T* dst, int64_t ld,
                                                      typename Vec<T>::V scale) {
  using V = typename Vec<T>::V;
  int64_t kb = 0;
  for (; kb + L <= tk; kb += L) {
    V v[L];
    for (int i = 0; i < L; ++i) {
      std::memcpy(&v[i], src + (kb + i) * L, sizeof(V));
      v[i] *= scale;
    }
    transpose<T>(v);
    for (int r = 0; r < nr; ++r) std::memcpy(dst + r * ld + kb, &v[r], sizeof(V));
  }
  for (int r = 0; r < nr; ++r)
    for (int64_t k = kb; k < tk; ++k) dst[r * ld + k] = scale[r] * src[k * L + r];
}

template <typename T>
__attribute__((always_inline)) inline typename Vec<T>::V load(const T* p) {
  typename Vec<T>::V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
__attribute__((always_inline)) inline void store(T* p, typename Vec<T>::V v) {
  std::memcpy(p, &v, sizeof(v));
}

// Per-thread scratch of a block: tiles in lane layout.
template <typename T>
struct Scratch {
  static constexpr int L = Lanes<T>();
  std::vector<T> buf;
  explicit Scratch(int64_t tiles) : buf(static_cast<size_t>(tiles) * kTile * L) {}
  T* tile(int i) { return buf.data() + static_cast<size_t>(i) * kTile * L; }
};

// u of nr rows: u[r][k] = P_{k-1} c_k, u[r][K] = P_{K-1}, times 1/||u|| if renorm. The whole
// block of u stays in lane layout (K + 1 vectors) until the scale is known, so u is written once.
template <typename T>
GMP_CLONES void forward_block(const T* theta, T* u, int nr, int64_t K, bool renorm, T* scratch) {
  using V = typename Vec<T>::V;
  constexpr int L = Lanes<T>();
  T *x = scratch, *s = scratch + kTile * L, *c = scratch + 2 * kTile * L, *ua = scratch + 3 * kTile * L;
  V p = V{} + T(1), acc = V{};
  for (int64_t k0 = 0; k0 < K; k0 += kTile) {
    const int64_t tk = std::min(kTile, K - k0);
    to_lanes<T, L>(theta + k0, K, nr, tk, x);
    sincos_tile(x, s, c, tk * L);
    T* uk = ua + k0 * L;
    for (int64_t k = 0; k < tk; ++k) {
      const V v = p * load(c + k * L);
      store(uk + k * L, v);
      acc += v * v;
      p *= load(s + k * L);
    }
  }
  store(ua + K * L, p);
  V scale = V{} + T(1);
  if (renorm)
    for (int r = 0; r < L; ++r) scale[r] = T(1) / std::sqrt(acc[r] + p[r] * p[r]);
  from_lanes<T, L>(ua, nr, K + 1, u, K + 1, scale);
}

// du of nr rows from the tangent t: dP_k = s_k dP_{k-1} + u_k t_k, du_k = c_k dP_{k-1} - P_k t_k.
template <typename T>
GMP_CLONES void tangent_block(const T* theta, const T* t, T* du, int nr, int64_t K, bool renorm, T* scratch) {
  using V = typename Vec<T>::V;
  constexpr int L = Lanes<T>();
  T *x = scratch, *s = scratch + kTile * L, *c = scratch + 2 * kTile * L, *tt = scratch + 3 * kTile * L;
  T* da = scratch + 4 * kTile * L;
  V p = V{} + T(1), dp = V{}, acc = V{};
  for (int64_t k0 = 0; k0 < K; k0 += kTile) {
    const int64_t tk = std::min(kTile, K - k0);
    to_lanes<T, L>(theta + k0, K, nr, tk, x);
    to_lanes<T, L>(t + k0, K, nr, tk, tt);
    sincos_tile(x, s, c, tk * L);
    T* dk = da + k0 * L;
    for (int64_t k = 0; k < tk; ++k) {
      const V sk = load(s + k * L), ck = load(c + k * L), tv = load(tt + k * L);
      const V uk = p * ck, pk = p * sk;
      acc += uk * uk;
      store(dk + k * L, ck * dp - pk * tv);
      dp = sk * dp + uk * tv;
      p = pk;
    }
  }
  store(da + K * L, dp);
  V scale = V{} + T(1);
  if (renorm)
    for (int r = 0; r < L; ++r) scale[r] = T(1) / std::sqrt(acc[r] + p[r] * p[r]);
  from_lanes<T, L>(da, nr, K + 1, du, K + 1, scale);
}

// dtheta of nr rows from g = dL/du. A forward sweep keeps sin, cos and the exclusive products
// P_{k-1} of the whole block in lane layout (3 * K * L values: about 0.75 MiB for K = 4095 in
// float32), then the reverse sweep runs tile by tile from the end.
template <typename T>
GMP_CLONES void backward_block(const T* theta, const T* g, T* dtheta, int nr, int64_t K, bool renorm, T* scratch) {
  using V = typename Vec<T>::V;
  constexpr int L = Lanes<T>();
  const int64_t tiles = (K + kTile - 1) / kTile;
  T* sa = scratch;                 // sin, all tiles
  T* ca = sa + tiles * kTile * L;  // cos
  T* pa = ca + tiles * kTile * L;  // P_{k-1}
  T* gt = pa + tiles * kTile * L;  // one tile of g, then of dtheta
  V p = V{} + T(1), acc = V{};
  for (int64_t k0 = 0; k0 < K; k0 += kTile) {
    const int64_t tk = std::min(kTile, K - k0);
    T *s = sa + k0 * L, *c = ca + k0 * L, *pe = pa + k0 * L;
    to_lanes<T, L>(theta + k0, K, nr, tk, gt);
    sincos_tile(gt, s, c, tk * L);
    for (int64_t k = 0; k < tk; ++k) {
      const V v = p * load(c + k * L);
      acc += v * v;
      store(pe + k * L, p);
      p *= load(s + k * L);
    }
  }
  V scale = V{} + T(1), R = V{};
  for (int r = 0; r < nr; ++r) {
    if (renorm) scale[r] = T(1) / std::sqrt(acc[r] + p[r] * p[r]);
    R[r] = g[r * (K + 1) + K] * scale[r];
  }
  for (int64_t k0 = (tiles - 1) * kTile; k0 >= 0; k0 -= kTile) {
    const int64_t tk = std::min(kTile, K - k0);
    const T *s = sa + k0 * L, *c = ca + k0 * L, *pe = pa + k0 * L;
    to_lanes<T, L>(g + k0, K + 1, nr, tk, gt);
    for (int64_t k = tk - 1; k >= 0; --k) {  // dtheta overwrites g of the tile
      const V gv = load(gt + k * L) * scale, sv = load(s + k * L), cv = load(c + k * L);
      store(gt + k * L, load(pe + k * L) * (cv * R - sv * gv));
      R = gv * cv + sv * R;
    }
    from_lanes<T, L>(gt, nr, tk, dtheta + k0, K, V{} + T(1));
  }
}

// ---------------------------------------------------------------------------------------------
// Parallel driver: rows split into contiguous chunks of whole row blocks, one task per chunk.
// ---------------------------------------------------------------------------------------------

// Elements per task below which splitting does not pay for the scheduling.
constexpr int64_t kMinWorkPerTask = 1 << 16;

// `block(r0, nr, scratch)` for every block of Lanes<T>() rows; `scratch_tiles` tiles of scratch per task.
template <typename T, typename BlockFn>
ffi::Future parallel_rows(ffi::ThreadPool& pool, int64_t M, int64_t K, int64_t scratch_tiles, BlockFn block) {
  constexpr int L = Lanes<T>();
  const int64_t blocks = (M + L - 1) / L;
  int64_t tasks = std::max<int64_t>(1, pool.num_threads());
  tasks = std::min<int64_t>(tasks, std::max<int64_t>(1, (M * K) / kMinWorkPerTask));
  tasks = std::min<int64_t>(tasks, std::max<int64_t>(blocks, 1));
  auto run = [=](int64_t i) {
    const int64_t b0 = blocks * i / tasks, b1 = blocks * (i + 1) / tasks;
    Scratch<T> scratch(scratch_tiles);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * L;
      block(r0, static_cast<int>(std::min<int64_t>(L, M - r0)), scratch.tile(0));
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

// Asks Linux for transparent huge pages on a large output buffer before it is first written: XLA
// hands the kernel freshly mapped memory, and 2 MiB pages turn ~16k page faults per 64 MiB into
// ~32. Only a hint (no effect where THP is off or the pages already exist).
template <typename T>
void advise_huge_pages(T* data, int64_t count) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data + count)) & ~(kHuge - 1);
  if (end > begin + 2 * kHuge) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)count;
#endif
}

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
  const T* th = theta.typed_data();
  T* out = u->typed_data();
  advise_huge_pages(out, M * (K + 1));
  const int64_t tiles = (K + 1 + kTile - 1) / kTile;
  return parallel_rows<T>(pool, M, K, 3 + tiles, [=](int64_t r0, int nr, T* scratch) {
    forward_block(th + r0 * K, out + r0 * (K + 1), nr, K, renorm != 0, scratch);
  });
}

template <ffi::DataType D>
ffi::Future BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<D> theta, ffi::Buffer<D> g, ffi::ResultBuffer<D> dtheta,
                         int32_t renorm) {
  using T = ffi::NativeType<D>;
  auto [M, K] = rows_and_angles(theta);
  const T *th = theta.typed_data(), *gg = g.typed_data();
  T* out = dtheta->typed_data();
  advise_huge_pages(out, M * K);
  const int64_t tiles = (K + kTile - 1) / kTile;
  return parallel_rows<T>(pool, M, K, 3 * tiles + 1, [=](int64_t r0, int nr, T* scratch) {
    backward_block(th + r0 * K, gg + r0 * (K + 1), out + r0 * K, nr, K, renorm != 0, scratch);
  });
}

template <ffi::DataType D>
ffi::Future TangentImpl(ffi::ThreadPool pool, ffi::Buffer<D> theta, ffi::Buffer<D> t, ffi::ResultBuffer<D> du,
                        int32_t renorm) {
  using T = ffi::NativeType<D>;
  auto [M, K] = rows_and_angles(theta);
  const T *th = theta.typed_data(), *tt = t.typed_data();
  T* out = du->typed_data();
  advise_huge_pages(out, M * (K + 1));
  const int64_t tiles = (K + 1 + kTile - 1) / kTile;
  return parallel_rows<T>(pool, M, K, 4 + tiles, [=](int64_t r0, int nr, T* scratch) {
    tangent_block(th + r0 * K, tt + r0 * K, out + r0 * (K + 1), nr, K, renorm != 0, scratch);
  });
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
