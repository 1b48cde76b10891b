// Gaussian-field rendering kernels for the "cupy" backend (compiled by NVRTC through cupy.RawModule).
//
// Work decomposition: the volume is cut into tiles of TILE_Z x TILE_Y x TILE_X = 256 voxels and
// each thread block owns one tile of one batch element (blockIdx.x = batch * tiles + tile),
// one voxel per thread. A block bins Gaussians to its tile itself: it streams the batch element's
// K Gaussians through shared memory in chunks of 256, each thread tests one Gaussian's culling box
// against the tile box, and the hits are compacted in index order (warp ballot + per-warp counts).
// All 256 threads then evaluate the compacted list, so a Gaussian that covers 10^5 voxels spreads
// over ~400 tiles' worth of threads instead of serialising.
//
// Forward: every voxel sums its own contributions in a register, in Gaussian index order; no
// atomics, so the output is deterministic (bit-identical between runs).
// Backward: per (tile, Gaussian) the ten moments (see geometry.py) are reduced over each warp with
// shuffles (six sums suffice: dz is constant within a warp), then over the block's warps in shared
// memory, and added to global memory with one atomicAdd per moment: 256x fewer atomics than one
// per voxel-Gaussian pair. The order of those atomicAdds between tiles varies from run to run, so
// the moments (and the gradients) are not deterministic: they differ in the last bits (measured on
// a GPU: 337 of 6,000 float32 entries, spread 4e-8).
//
// Tested without a GPU: tests/test_kernels_emulated.py builds this file unchanged with g++ and
// tests/cuda_emu/cuda_emu.h and runs it on the CPU (keep it free of CUDA headers and of intrinsics
// that header lacks), and tests/test_kernel_resources.py holds ptxas's register, shared-memory and
// spill figures to limits (see docs/renderer_gpu.md).
//
// The result is defined by the ellipsoid test q = d^T A d <= cutoff^2 exactly as in the CPU and
// torch backends; the culling boxes get half a voxel of slack so rounding can only add work.
//
// Layouts (row-major, see geometry.py): means [B,K,3] (z,y,x), conics [B,K,6]
// (zz,zy,zx,yy,yx,xx), intensities [B,K], radii [B,K,3], mask uint8 [B,D,H,W] or null,
// out / grad_out [B,D,H,W], moments [B,K,10]. T is float or double.

#define TILE_Z 4
#define TILE_Y 8
#define TILE_X 8
#define BLOCK_THREADS 256  // = TILE_Z * TILE_Y * TILE_X
#define NUM_WARPS 8        // = BLOCK_THREADS / 32
#define CHUNK 256          // Gaussians tested per culling round (one per thread)
#define RED_BATCH 32       // Gaussians whose moments are reduced across warps per shared round
#define NUM_MOMENTS 10
#define FULL_MASK 0xffffffffu

static_assert(TILE_Z * TILE_Y * TILE_X == BLOCK_THREADS, "one voxel per thread");
static_assert((TILE_Y * TILE_X) % 32 == 0, "each warp must lie in one z-layer of the tile");

__device__ __forceinline__ float gexp(float x) { return expf(x); }
__device__ __forceinline__ double gexp(double x) { return exp(x); }

// One thread's voxel and the tile's box of voxel centres, in normalised coordinates.
template <typename T>
struct TileVoxel {
    int b;             // batch element
    bool valid;        // inside the volume (edge tiles overhang it)
    long long index;   // flat voxel index within one volume
    T pz, py, px;      // voxel centre
    T lo[3], hi[3];    // tile's voxel-centre box, widened by half a voxel
};

template <typename T>
__device__ TileVoxel<T> tile_voxel(int D, int H, int W) {
    const int tiles_x = (W + TILE_X - 1) / TILE_X;
    const int tiles_y = (H + TILE_Y - 1) / TILE_Y;
    const int tiles_z = (D + TILE_Z - 1) / TILE_Z;
    const int tiles = tiles_x * tiles_y * tiles_z;
    const int tile = blockIdx.x % tiles;
    const int z0 = (tile / (tiles_x * tiles_y)) * TILE_Z;
    const int y0 = ((tile / tiles_x) % tiles_y) * TILE_Y;
    const int x0 = (tile % tiles_x) * TILE_X;
    const int t = threadIdx.x;
    const int z = z0 + t / (TILE_Y * TILE_X);
    const int y = y0 + (t / TILE_X) % TILE_Y;
    const int x = x0 + t % TILE_X;

    TileVoxel<T> v;
    v.b = blockIdx.x / tiles;
    v.valid = (z < D) && (y < H) && (x < W);
    v.index = ((long long)z * H + y) * W + x;
    v.pz = (T(z) + T(0.5)) / T(D);
    v.py = (T(y) + T(0.5)) / T(H);
    v.px = (T(x) + T(0.5)) / T(W);
    const int first[3] = {z0, y0, x0};
    const int extent[3] = {TILE_Z, TILE_Y, TILE_X};
    const int size[3] = {D, H, W};
#pragma unroll
    for (int a = 0; a < 3; ++a) {
        const int last = min(first[a] + extent[a], size[a]) - 1;
        v.lo[a] = T(first[a]) / T(size[a]);          // centre of first voxel - half a voxel
        v.hi[a] = (T(last) + T(1)) / T(size[a]);     // centre of last voxel + half a voxel
    }
    return v;
}

// Gaussians of one culling round, compacted in shared memory.
template <typename T>
struct SharedGaussians {
    T mean[CHUNK * 3];
    T conic[CHUNK * 6];
    T intensity[CHUNK];
    int index[CHUNK];
    int warp_count[NUM_WARPS];
};

// Loads the Gaussians [start, start + CHUNK) of batch element b whose culling box meets the tile,
// in index order, into s. Must be called by all threads of the block; returns the count.
template <typename T>
__device__ int load_tile_gaussians(const T* __restrict__ means, const T* __restrict__ conics,
                                   const T* __restrict__ intensities, const T* __restrict__ radii,
                                   int b, int K, int start, const TileVoxel<T>& v,
                                   SharedGaussians<T>& s) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int k = start + threadIdx.x;
    bool hit = false;
    long long g = 0;
    if (k < K) {
        g = (long long)b * K + k;
        hit = true;
        for (int a = 0; a < 3; ++a) {
            const T m = means[g * 3 + a];
            const T r = radii[g * 3 + a];
            hit = hit && (m - r <= v.hi[a]) && (m + r >= v.lo[a]);
        }
    }
    const unsigned ballot = __ballot_sync(FULL_MASK, hit);
    if (lane == 0) s.warp_count[warp] = __popc(ballot);
    __syncthreads();
    int offset = 0, total = 0;
    for (int w = 0; w < NUM_WARPS; ++w) {
        const int c = s.warp_count[w];
        offset += (w < warp) ? c : 0;
        total += c;
    }
    if (hit) {
        const int slot = offset + __popc(ballot & ((1u << lane) - 1u));
        for (int a = 0; a < 3; ++a) s.mean[slot * 3 + a] = means[g * 3 + a];
        for (int a = 0; a < 6; ++a) s.conic[slot * 6 + a] = conics[g * 6 + a];
        s.intensity[slot] = intensities[g];
        s.index[slot] = k;
    }
    __syncthreads();
    return total;
}

// Offset d = x - mu and q = d^T A d for compacted Gaussian j.
template <typename T>
__device__ __forceinline__ T mahalanobis(const SharedGaussians<T>& s, int j, const TileVoxel<T>& v,
                                         T& dz, T& dy, T& dx) {
    dz = v.pz - s.mean[j * 3 + 0];
    dy = v.py - s.mean[j * 3 + 1];
    dx = v.px - s.mean[j * 3 + 2];
    const T* c = &s.conic[j * 6];
    return c[0] * dz * dz + c[3] * dy * dy + c[5] * dx * dx +
           T(2) * (c[1] * dz * dy + c[2] * dz * dx + c[4] * dy * dx);
}

template <typename T>
__global__ void __launch_bounds__(BLOCK_THREADS)
render_forward(const T* __restrict__ means, const T* __restrict__ conics,
               const T* __restrict__ intensities, const T* __restrict__ radii,
               const unsigned char* __restrict__ mask, T* __restrict__ out,
               int K, int D, int H, int W, T cutoff2) {
    __shared__ SharedGaussians<T> s;
    const long long V = (long long)D * H * W;
    const TileVoxel<T> v = tile_voxel<T>(D, H, W);
    const int b = v.b;
    const bool active = v.valid && (mask == nullptr || mask[b * V + v.index] != 0);
    if (!__syncthreads_or(active)) return;  // tile entirely unrendered (out is pre-zeroed)

    T acc = T(0);
    for (int start = 0; start < K; start += CHUNK) {
        const int n = load_tile_gaussians(means, conics, intensities, radii, b, K, start, v, s);
        if (active) {
            for (int j = 0; j < n; ++j) {
                T dz, dy, dx;
                const T q = mahalanobis(s, j, v, dz, dy, dx);
                if (q <= cutoff2) acc += s.intensity[j] * gexp(T(-0.5) * fmax(q, T(0)));
            }
        }
        // No barrier needed before the next round overwrites s: load_tile_gaussians writes only
        // warp_count (last read before its own second barrier) until its first barrier, which no
        // thread passes before every thread has finished reading this round's s.
    }
    if (active) out[b * V + v.index] = acc;
}

template <typename T>
__global__ void __launch_bounds__(BLOCK_THREADS)
render_backward(const T* __restrict__ means, const T* __restrict__ conics,
                const T* __restrict__ intensities, const T* __restrict__ radii,
                const unsigned char* __restrict__ mask, const T* __restrict__ grad_out,
                T* __restrict__ moments, int K, int D, int H, int W, T cutoff2) {
    __shared__ SharedGaussians<T> s;
    __shared__ T partial[NUM_WARPS * RED_BATCH * NUM_MOMENTS];
    const long long V = (long long)D * H * W;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const TileVoxel<T> v = tile_voxel<T>(D, H, W);
    const int b = v.b;
    T g = T(0);
    if (v.valid && (mask == nullptr || mask[b * V + v.index] != 0)) g = grad_out[b * V + v.index];
    const bool active = (g != T(0));
    if (!__syncthreads_or(active)) return;  // nothing flows back through this tile

    for (int start = 0; start < K; start += CHUNK) {
        const int n = load_tile_gaussians(means, conics, intensities, radii, b, K, start, v, s);
        for (int j0 = 0; j0 < n; j0 += RED_BATCH) {
            const int m = min(RED_BATCH, n - j0);
            for (int jj = 0; jj < m; ++jj) {
                T dz, dy, dx;
                const T q = mahalanobis(s, j0 + jj, v, dz, dy, dx);
                const T w = (active && q <= cutoff2) ? g * gexp(T(-0.5) * fmax(q, T(0))) : T(0);
                // A warp spans one z-layer of the tile, so dz is warp-uniform: reduce the six
                // sums that vary within the warp and expand them to the ten moments afterwards.
                T red[6] = {w, w * dy, w * dx, w * dy * dy, w * dy * dx, w * dx * dx};
                // Warp-uniform branch: whole warps outside the ellipsoid skip the shuffles.
                if (__any_sync(FULL_MASK, w != T(0))) {
#pragma unroll
                    for (int c = 0; c < 6; ++c) {
#pragma unroll
                        for (int off = 16; off > 0; off >>= 1)
                            red[c] += __shfl_down_sync(FULL_MASK, red[c], off);
                    }
                } else {
#pragma unroll
                    for (int c = 0; c < 6; ++c) red[c] = T(0);
                }
                if (lane == 0) {
                    T* p = &partial[(warp * RED_BATCH + jj) * NUM_MOMENTS];
                    p[0] = red[0];            // S0
                    p[1] = dz * red[0];       // S1 z
                    p[2] = red[1];            // S1 y
                    p[3] = red[2];            // S1 x
                    p[4] = dz * dz * red[0];  // S2 zz
                    p[5] = dz * red[1];       // S2 zy
                    p[6] = dz * red[2];       // S2 zx
                    p[7] = red[3];            // S2 yy
                    p[8] = red[4];            // S2 yx
                    p[9] = red[5];            // S2 xx
                }
            }
            __syncthreads();
            for (int t = threadIdx.x; t < m * NUM_MOMENTS; t += BLOCK_THREADS) {
                const int jj = t / NUM_MOMENTS;
                const int c = t - jj * NUM_MOMENTS;
                T sum = T(0);
                for (int w = 0; w < NUM_WARPS; ++w) sum += partial[(w * RED_BATCH + jj) * NUM_MOMENTS + c];
                if (sum != T(0)) {
                    const long long gk = (long long)b * K + s.index[j0 + jj];
                    atomicAdd(&moments[gk * NUM_MOMENTS + c], sum);
                }
            }
            __syncthreads();  // partial is rewritten by the next batch, s by the next round
        }
    }
}

template __global__ void render_forward<float>(const float*, const float*, const float*, const float*,
                                               const unsigned char*, float*, int, int, int, int, float);
template __global__ void render_forward<double>(const double*, const double*, const double*, const double*,
                                                const unsigned char*, double*, int, int, int, int, double);
template __global__ void render_backward<float>(const float*, const float*, const float*, const float*,
                                                const unsigned char*, const float*, float*, int, int, int,
                                                int, float);
template __global__ void render_backward<double>(const double*, const double*, const double*,
                                                 const double*, const unsigned char*, const double*,
                                                 double*, int, int, int, int, double);
