// The C entry points of an emulated CUDA module: launch a kernel the way the driver's
// cuLaunchKernel does (by name, grid and block size, an array of pointers to the arguments), and
// read the source's compile-time constants. build.py generates the translation unit:
//
//   #include "cuda_emu.h"
//   #include "<the CUDA source>"
//   #include "launcher.h"
//   const cuda_emu::Kernel cuda_emu::KERNELS[] = {
//       cuda_emu::kernel("render_forward<float>", &render_forward<float>), ...};
//   const cuda_emu::Constant cuda_emu::CONSTANTS[] = {{"TILE_Z", TILE_Z}, ...};
//
// and compiles it with g++ -std=c++20 -shared -fPIC -pthread -fvisibility=hidden -fno-gnu-unique
// -fdata-sections -Wl,-T,shared.ld.
#pragma once

#include <pthread.h>
#include <sched.h>

#include <cstdio>
#include <functional>
#include <mutex>
#include <utility>

// shared.ld defines these around the statics that hold every __shared__ variable.
extern "C" char cuda_emu_shared_begin[];
extern "C" char cuda_emu_shared_end[];

namespace cuda_emu {

constexpr unsigned char POISON = 0xff;
constexpr unsigned MAX_BLOCK_THREADS = 1024;

// ctypes releases the GIL, so two Python threads could launch at once, but `current`, blockIdx and
// the shared-memory statics belong to one launch. (A namespace-scope variable: a function-local
// static outside a namespace would count as __shared__ and be poisoned, see shared.ld.)
inline std::mutex one_launch_at_a_time;

struct Kernel {
    const char* name;
    std::vector<std::size_t> param_sizes;
    std::function<void(void**)> call;  // unpacks the argument array by the kernel's own types
};

struct Constant {
    const char* name;
    long value;
};

extern const Kernel KERNELS[];
extern const std::size_t KERNEL_COUNT;
extern const Constant CONSTANTS[];
extern const std::size_t CONSTANT_COUNT;

template <typename... Args, std::size_t... I>
void call_with(void (*fn)(Args...), void** params, std::index_sequence<I...>) {
    fn(*static_cast<std::remove_cv_t<Args>*>(params[I])...);
}

template <typename... Args>
Kernel kernel(const char* name, void (*fn)(Args...)) {
    return {name, {sizeof(Args)...},
            [fn](void** params) { call_with(fn, params, std::index_sequence_for<Args...>{}); }};
}

inline void poison_shared_memory() {
    std::memset(cuda_emu_shared_begin, POISON, cuda_emu_shared_end - cuda_emu_shared_begin);
}

inline void worker(Block& b, const Kernel& k, void** params, int t) {
    self = t;
    threadIdx = {static_cast<unsigned>(t), 0, 0};
    Lane& me = b.lanes[t];
    for (;;) {
        me.go.acquire();
        if (b.shutdown) return;
        try {
            if (b.aborted) throw Aborted{};  // woken only to leave the failed block
            k.call(params);
            exit_thread();
        } catch (const Aborted&) {
            if (b.unwinding.fetch_sub(1) == 1) b.done.release();
        }
    }
}

// Only one thread runs at a time, so all of them share one CPU: a hand-over then wakes a thread on
// the same core (no cross-CPU wake-up), and the emulation never takes more than one core.
inline void pin_to_one_cpu(std::vector<std::thread>& pool) {
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return;
    int cpu = sched_getcpu();
    if (cpu < 0 || !CPU_ISSET(cpu, &allowed)) return;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    for (auto& th : pool) pthread_setaffinity_np(th.native_handle(), sizeof(one), &one);
}

// Runs the grid block by block; returns the error message, empty on success.
inline std::string run_grid(const Kernel& k, unsigned grid, unsigned threads, void** params, bool descending) {
    Block b;
    b.threads = static_cast<int>(threads);
    b.descending = descending;
    b.lanes = std::make_unique<Lane[]>(threads);
    current = &b;
    gridDim = {grid, 1, 1};
    blockDim = {threads, 1, 1};
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) pool.emplace_back(worker, std::ref(b), std::cref(k), params, t);
    pin_to_one_cpu(pool);
    for (unsigned block = 0; block < grid && !b.aborted; ++block) {
        blockIdx = {block, 0, 0};
        poison_shared_memory();
        for (unsigned t = 0; t < threads; ++t) b.lanes[t].op = Op::Running;
        b.lanes[descending ? threads - 1 : 0].go.release();
        b.done.acquire();
    }
    b.shutdown = true;
    for (unsigned t = 0; t < threads; ++t) b.lanes[t].go.release();
    for (auto& th : pool) th.join();
    current = nullptr;
    return b.error;
}

inline std::string check_launch(const Kernel& k, unsigned threads, int nparams, const std::size_t* sizes) {
    if (threads == 0 || threads > MAX_BLOCK_THREADS || threads % warpSize != 0)
        return "a block of " + std::to_string(threads) + " threads: the emulator runs whole warps, at most 1024";
    if (static_cast<std::size_t>(nparams) != k.param_sizes.size())
        return std::string(k.name) + " takes " + std::to_string(k.param_sizes.size()) + " arguments, got " +
               std::to_string(nparams);
    for (int i = 0; i < nparams; ++i)
        if (sizes[i] != k.param_sizes[i])
            return std::string(k.name) + " argument " + std::to_string(i) + " is " +
                   std::to_string(k.param_sizes[i]) + " bytes, got " + std::to_string(sizes[i]);
    return {};
}

}  // namespace cuda_emu

// Everything else is hidden (-fvisibility=hidden), so two builds loaded at once (the kernel and a
// planted-bug copy) never bind to each other's statics.
#define CUDA_EMU_EXPORT extern "C" __attribute__((visibility("default")))

// 0 on success; otherwise 1 and the reason in error[0 .. error_size).
CUDA_EMU_EXPORT int cuda_emu_launch(const char* name, unsigned grid, unsigned threads, int nparams, void** params,
                                    const std::size_t* sizes, int descending, char* error, std::size_t error_size) {
    const std::lock_guard<std::mutex> lock(cuda_emu::one_launch_at_a_time);
    std::string message = std::string("no kernel named ") + name;
    for (std::size_t i = 0; i < cuda_emu::KERNEL_COUNT; ++i) {
        const cuda_emu::Kernel& k = cuda_emu::KERNELS[i];
        if (std::strcmp(k.name, name) != 0) continue;
        message = cuda_emu::check_launch(k, threads, nparams, sizes);
        if (message.empty()) message = cuda_emu::run_grid(k, grid, threads, params, descending != 0);
        break;
    }
    std::snprintf(error, error_size, "%s", message.c_str());
    return message.empty() ? 0 : 1;
}

// 1 and the value of the named compile-time constant in *value, or 0 if it was not exported.
CUDA_EMU_EXPORT int cuda_emu_constant(const char* name, long* value) {
    for (std::size_t i = 0; i < cuda_emu::CONSTANT_COUNT; ++i) {
        if (std::strcmp(cuda_emu::CONSTANTS[i].name, name) == 0) {
            *value = cuda_emu::CONSTANTS[i].value;
            return 1;
        }
    }
    return 0;
}

// Bytes of __shared__ memory the source declares (all kernels together).
CUDA_EMU_EXPORT long cuda_emu_shared_bytes() { return cuda_emu_shared_end - cuda_emu_shared_begin; }
