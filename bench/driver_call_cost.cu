// What the CUDA driver calls the compute gate makes cost the CPU, one by one.
//
//   nvcc -O2 -o /tmp/driver_call_cost bench/driver_call_cost.cu -lcuda
//   /tmp/driver_call_cost [calls]
//
// Prints the mean wall time per call, in nanoseconds, for each call the gate makes
// around a launch (docs/compute.md), and for a launch itself, so that the cost of
// gating a launch can be added up from its parts.
#include <cuda.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

__global__ void empty_kernel() {}

static double now_ns() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

#define CHECK(x)                                                              \
    do {                                                                      \
        CUresult r_ = (x);                                                    \
        if (r_ != CUDA_SUCCESS && r_ != CUDA_ERROR_NOT_READY) {               \
            fprintf(stderr, "%s failed: %d\n", #x, (int)r_);                  \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

#define TIME(label, n, ...)                                                  \
    do {                                                                      \
        double t0_ = now_ns();                                                \
        for (long i_ = 0; i_ < (n); i_++) {                                   \
            __VA_ARGS__;                                                      \
        }                                                                     \
        double per_ = (now_ns() - t0_) / (double)(n);                         \
        printf("%-52s %8.0f\n", label, per_);                                 \
        cudaDeviceSynchronize();                                              \
    } while (0)

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000;
    cudaFree(0);
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    enum { RING = 4096 };
    CUevent timing[RING], plain[RING], blocking[RING];
    for (int i = 0; i < RING; i++) {
        CHECK(cuEventCreate(&timing[i], CU_EVENT_DEFAULT));
        CHECK(cuEventCreate(&plain[i], CU_EVENT_DISABLE_TIMING));
        CHECK(cuEventCreate(&blocking[i], CU_EVENT_BLOCKING_SYNC));
    }
    char name[256];
    CUdevice dev;
    cuCtxGetDevice(&dev);
    cuDeviceGetName(name, sizeof name, dev);
    int drv;
    cuDriverGetVersion(&drv);
    printf("%s, CUDA driver API %d, %ld calls each\n", name, drv, n);
    printf("%-52s %8s\n", "call", "ns/call");
    TIME("launch <<<1,1>>> (runtime)", n, empty_kernel<<<1, 1, 0, s>>>());
    TIME("launch + cuEventRecord (timing)", n,
         { empty_kernel<<<1, 1, 0, s>>>(); CHECK(cuEventRecord(timing[i_ % RING], s)); });
    TIME("launch + cuEventRecord (blocking-sync, timing)", n,
         { empty_kernel<<<1, 1, 0, s>>>(); CHECK(cuEventRecord(blocking[i_ % RING], s)); });
    TIME("launch + cuEventRecord (no timing)", n,
         { empty_kernel<<<1, 1, 0, s>>>(); CHECK(cuEventRecord(plain[i_ % RING], s)); });
    TIME("cuEventRecord (timing) alone", n, CHECK(cuEventRecord(timing[i_ % RING], s)));
    TIME("cuEventQuery (completed)", n, CHECK(cuEventQuery(timing[i_ % RING])));
    TIME("cuStreamQuery (idle stream)", n, CHECK(cuStreamQuery(s)));
    CUcontext ctx;
    TIME("cuCtxGetCurrent", n, CHECK(cuCtxGetCurrent(&ctx)));
    CUstreamCaptureStatus st;
    TIME("cuStreamIsCapturing", n, CHECK(cuStreamIsCapturing(s, &st)));
    CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_RELAXED;
    TIME("cuThreadExchangeStreamCaptureMode", n, CHECK(cuThreadExchangeStreamCaptureMode(&mode)));
    float ms;
    TIME("cuEventElapsedTime", n,
         CHECK(cuEventElapsedTime(&ms, timing[i_ % RING], timing[(i_ + 1) % RING])));
    // A busy stream: queries of events not yet reached.
    for (int i = 0; i < 2000; i++) empty_kernel<<<1, 1, 0, s>>>();
    CHECK(cuEventRecord(timing[0], s));
    TIME("cuEventQuery (pending)", 1000, CHECK(cuEventQuery(timing[0])));
    return 0;
}
