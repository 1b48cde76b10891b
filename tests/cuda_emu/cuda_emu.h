// CUDA on the CPU: just enough of the CUDA C++ surface for renderer_cupy/kernels.cu to compile,
// unchanged, with g++ -std=c++20 and run on OS threads.
//
// Execution model:
//   * one OS thread per CUDA thread of a block; blocks run one at a time, so __shared__ variables
//     can be function-local statics. shared.ld gathers them into one range, which launcher.h fills
//     with a poison pattern (0xff: NaN as float/double, -1 as int) before every block, so a read of
//     shared memory that no thread wrote shows up as NaN or a bad index instead of a stale value.
//   * exactly one thread runs at a time and control changes hands only at a sync point (a
//     barrier or a warp intrinsic), to the next runnable thread in index order (or reverse index
//     order). The interleaving is therefore deterministic: a missing barrier fails the same way on
//     every run, and the atomics always add in the same order.
//   * __syncthreads / __syncthreads_or complete when every thread of the block waits at the same
//     source line; __ballot_sync / __any_sync / __shfl_down_sync when every lane named in the
//     mask waits at the same line with the same mask. When no thread can run and the block has not
//     finished (a thread returned before a barrier the others wait at, a partial warp called an
//     intrinsic, lanes wait at different lines), the launch fails with a message naming the line
//     instead of hanging.
//   * atomicAdd is std::atomic_ref's fetch_add; __popc, min/max and the <math.h> functions (with
//     their float overloads, as in CUDA) are what device code sees.
#pragma once

#include <math.h>  // libstdc++'s math.h puts std::fmax(float, float) etc. in the global namespace

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <semaphore>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

static_assert(std::is_same_v<decltype(fmax(1.0f, 1.0f)), float>, "float math must stay float, as in CUDA");

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct uint3 {
    unsigned x, y, z;
};

inline thread_local uint3 threadIdx;
inline uint3 blockIdx, blockDim, gridDim;
constexpr int warpSize = 32;

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }

template <typename T>
inline T atomicAdd(T* address, T value) {
    return std::atomic_ref<T>(*address).fetch_add(value);
}

namespace cuda_emu {

enum class Op : std::uint8_t { Running, Exited, SyncThreads, SyncThreadsOr, Ballot, Any, ShflDown };

inline const char* op_name(Op op) {
    static const char* names[] = {"running", "exited", "__syncthreads", "__syncthreads_or",
                                  "__ballot_sync", "__any_sync", "__shfl_down_sync"};
    return names[static_cast<int>(op)];
}

inline bool block_wide(Op op) { return op == Op::SyncThreads || op == Op::SyncThreadsOr; }

// Where one thread is and what it brought to the sync point it waits at.
struct Lane {
    Op op = Op::Running;
    int line = 0;
    unsigned mask = 0;
    std::uint64_t value = 0;  // predicate or the bits of the shuffled variable
    unsigned delta = 0;
    int width = 32;
    std::uint64_t result = 0;
    std::binary_semaphore go{0};  // released when this thread may run
};

struct Aborted {};  // thrown out of a sync point to unwind a thread of a failed block

// The block being executed. Only the running thread touches it (the semaphores order the
// accesses), except while a failed block unwinds, when only `unwinding` is shared.
struct Block {
    int threads = 0;
    bool descending = false;
    std::unique_ptr<Lane[]> lanes;
    bool shutdown = false;
    bool aborted = false;
    std::string error;
    std::atomic<int> unwinding{0};
    std::binary_semaphore done{0};  // released when the block has finished or failed
};

inline Block* current = nullptr;
inline thread_local int self = 0;

inline int lane_of(int t) { return t % warpSize; }
inline int warp_of(int t) { return t / warpSize; }

// The next thread that may run after thread t (t itself last), or -1.
inline int next_runnable(int t) {
    Block& b = *current;
    for (int i = 1; i <= b.threads; ++i) {
        const int u = b.descending ? (t - i + b.threads) % b.threads : (t + i) % b.threads;
        if (b.lanes[u].op == Op::Running) return u;
    }
    return -1;
}

std::string describe_deadlock();

// Fails the block: every waiting thread is woken to unwind, and the launch reports `message`.
inline void abort_block(const std::string& message) {
    Block& b = *current;
    b.aborted = true;
    b.error = message;
    int waiting = 0;
    for (int t = 0; t < b.threads; ++t) waiting += (b.lanes[t].op != Op::Exited) ? 1 : 0;
    b.unwinding.store(waiting);
    for (int t = 0; t < b.threads; ++t)
        if (t != self && b.lanes[t].op != Op::Exited) b.lanes[t].go.release();
}

// Gives the CPU to the next runnable thread and waits for this one's turn again.
inline void yield() {
    Block& b = *current;
    const int next = next_runnable(self);
    if (next < 0) {
        abort_block(describe_deadlock());
        throw Aborted{};
    }
    b.lanes[next].go.release();
    b.lanes[self].go.acquire();
    if (b.aborted) throw Aborted{};
}

// Completes the block-wide sync point if every thread waits at it.
inline bool complete_block_sync(const Lane& me) {
    Block& b = *current;
    std::uint64_t any = 0;
    for (int t = 0; t < b.threads; ++t) {
        const Lane& l = b.lanes[t];
        if (l.op != me.op || l.line != me.line) return false;
        any |= l.value;
    }
    for (int t = 0; t < b.threads; ++t) {
        b.lanes[t].result = any ? 1 : 0;
        b.lanes[t].op = Op::Running;
    }
    return true;
}

// Completes the warp intrinsic if every lane named in the mask waits at it with the same mask.
inline bool complete_warp_sync(const Lane& me) {
    Block& b = *current;
    const int base = warp_of(self) * warpSize;
    unsigned ballot = 0;
    for (int i = 0; i < warpSize; ++i) {
        if (!(me.mask >> i & 1u)) continue;
        const Lane& l = b.lanes[base + i];
        if (l.op != me.op || l.line != me.line || l.mask != me.mask) return false;
        ballot |= (l.value != 0 ? 1u : 0u) << i;
    }
    for (int i = 0; i < warpSize; ++i) {
        if (!(me.mask >> i & 1u)) continue;
        Lane& l = b.lanes[base + i];
        if (me.op == Op::ShflDown) {
            // A source lane outside the width segment leaves the caller's own value, as on a GPU.
            const int src = i + static_cast<int>(l.delta);
            const bool in_segment = (i % l.width) + static_cast<int>(l.delta) < l.width;
            if (in_segment && !(me.mask >> src & 1u)) {
                abort_block("__shfl_down_sync at line " + std::to_string(me.line) + ": lane " +
                            std::to_string(i) + " reads lane " + std::to_string(src) +
                            ", which is not in the mask");
                throw Aborted{};
            }
            l.result = in_segment ? b.lanes[base + src].value : l.value;
        } else {
            l.result = (me.op == Op::Ballot) ? ballot : (ballot != 0 ? 1 : 0);
        }
    }
    for (int i = 0; i < warpSize; ++i)
        if (me.mask >> i & 1u) b.lanes[base + i].op = Op::Running;
    return true;
}

// The calling thread waits at a sync point until it completes; returns its result.
inline std::uint64_t arrive(Op op, int line, std::uint64_t value, unsigned mask = 0, unsigned delta = 0,
                            int width = warpSize) {
    Block& b = *current;
    Lane& me = b.lanes[self];
    if (!block_wide(op) && !(mask >> lane_of(self) & 1u)) {
        abort_block(std::string(op_name(op)) + " at line " + std::to_string(line) + ": calling lane " +
                    std::to_string(lane_of(self)) + " is not in its own mask");
        throw Aborted{};
    }
    me.op = op;
    me.line = line;
    me.value = value;
    me.mask = mask;
    me.delta = delta;
    me.width = width;
    const bool complete = block_wide(op) ? complete_block_sync(me) : complete_warp_sync(me);
    if (!complete) yield();
    return me.result;
}

// The calling thread returned from the kernel.
inline void exit_thread() {
    Block& b = *current;
    b.lanes[self].op = Op::Exited;
    const int next = next_runnable(self);
    if (next >= 0) {
        b.lanes[next].go.release();
        return;
    }
    for (int t = 0; t < b.threads; ++t) {
        if (b.lanes[t].op != Op::Exited) {  // someone still waits, and nobody can wake it
            abort_block(describe_deadlock());  // the waiting threads unwind and release `done`
            return;
        }
    }
    b.done.release();
}

inline std::string lanes_at(const std::vector<int>& ts) {
    std::string s;
    for (std::size_t i = 0; i < ts.size() && i < 8; ++i) s += (i ? "," : "") + std::to_string(ts[i]);
    return s + (ts.size() > 8 ? ",..." : "");
}

// Why no thread can run: the first sync point that waits for threads that will never come.
inline std::string describe_deadlock() {
    Block& b = *current;
    int exited = 0;
    for (int t = 0; t < b.threads; ++t) exited += b.lanes[t].op == Op::Exited ? 1 : 0;
    for (int t = 0; t < b.threads; ++t) {
        const Lane& l = b.lanes[t];
        if (l.op == Op::Exited) continue;
        std::vector<int> here, elsewhere, gone;
        const bool wide = block_wide(l.op);
        const int first = wide ? 0 : warp_of(t) * warpSize;
        const int count = wide ? b.threads : warpSize;
        for (int u = first; u < first + count; ++u) {
            if (!wide && !(l.mask >> lane_of(u) & 1u)) continue;
            const Lane& o = b.lanes[u];
            (o.op == Op::Exited ? gone : (o.op == l.op && o.line == l.line) ? here : elsewhere).push_back(u);
        }
        const std::size_t named = here.size() + elsewhere.size() + gone.size();
        const std::string what = std::string(op_name(l.op)) + " at line " + std::to_string(l.line) +
                                 " of block " + std::to_string(blockIdx.x) + " reached by " +
                                 std::to_string(here.size()) + " of " + std::to_string(named) +
                                 (wide ? " threads of the block" : " lanes of warp " + std::to_string(warp_of(t)));
        if (!gone.empty())
            return (wide ? "partial-block barrier: " : "partial-warp intrinsic: ") + what + "; threads " +
                   lanes_at(gone) + " had returned";
        if (!elsewhere.empty())
            return "divergent sync: " + what + "; threads " + lanes_at(elsewhere) + " wait elsewhere (first: " +
                   op_name(b.lanes[elsewhere[0]].op) + " at line " + std::to_string(b.lanes[elsewhere[0]].line) + ")";
    }
    return "deadlock with " + std::to_string(exited) + " threads exited";
}

template <typename V>
inline std::uint64_t bits_of(V v) {
    static_assert(sizeof(V) <= sizeof(std::uint64_t) && std::is_trivially_copyable_v<V>);
    std::uint64_t u = 0;
    std::memcpy(&u, &v, sizeof(V));
    return u;
}

template <typename V>
inline V from_bits(std::uint64_t u) {
    V v;
    std::memcpy(&v, &u, sizeof(V));
    return v;
}

}  // namespace cuda_emu

// __LINE__ identifies the sync point, so threads waiting at different barriers never pair up.
#define __syncthreads() ((void)::cuda_emu::arrive(::cuda_emu::Op::SyncThreads, __LINE__, 0))
#define __syncthreads_or(pred) \
    (static_cast<int>(::cuda_emu::arrive(::cuda_emu::Op::SyncThreadsOr, __LINE__, (pred) ? 1 : 0)))
#define __ballot_sync(mask, pred) \
    (static_cast<unsigned>(::cuda_emu::arrive(::cuda_emu::Op::Ballot, __LINE__, (pred) ? 1 : 0, (mask))))
#define __any_sync(mask, pred) \
    (static_cast<int>(::cuda_emu::arrive(::cuda_emu::Op::Any, __LINE__, (pred) ? 1 : 0, (mask))))
#define __shfl_down_sync(mask, var, ...) ::cuda_emu::shfl_down((mask), (var), __LINE__, __VA_ARGS__)

namespace cuda_emu {
template <typename V>
inline V shfl_down(unsigned mask, V var, int line, unsigned delta, int width = warpSize) {
    return from_bits<V>(arrive(Op::ShflDown, line, bits_of(var), mask, delta, width));
}
}  // namespace cuda_emu
