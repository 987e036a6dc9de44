// overhead.cu: micro-benchmarks for the cost of the gpuslice interposer.
// Build: nvcc -O2 -o /tmp/overhead bench/overhead.cu
// Modes (one line of key=value output each; exit 0 on success, 2 on CUDA error):
//   overhead launch N             N empty <<<1,1>>> launches on one stream, then
//                                 cudaStreamSynchronize: launches_per_s=
//   overhead mallocfree N SIZE    N cudaMalloc+cudaFree pairs of SIZE bytes
//                                 (SIZE accepts KiB/MiB/GiB suffixes): pairs_per_s=
//   overhead startup              cudaFree(0) + one trivial kernel + sync, then exit:
//                                 in_process_ms= (from main(); the runner also
//                                 measures the whole process's wall time)
// Every mode also prints preloaded=<0|1> (libgpuslice mapped) and total_mib=
// (cudaMemGetInfo total: the slice limit when one applies).

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <strings.h>

__global__ void empty_kernel() {}

static double now_s() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#define CK(x)                                                                                  \
    do {                                                                                       \
        cudaError_t e_ = (x);                                                                  \
        if (e_ != cudaSuccess) {                                                               \
            fprintf(stderr, "overhead: %s failed: %s (%s)\n", #x, cudaGetErrorName(e_),        \
                    cudaGetErrorString(e_));                                                   \
            return 2;                                                                          \
        }                                                                                      \
    } while (0)

static int preloaded() {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return 0;
    char line[4096];
    int found = 0;
    while (fgets(line, sizeof(line), f)) {
        if (strstr(line, "libgpuslice")) { found = 1; break; }
    }
    fclose(f);
    return found;
}

static size_t parse_size(const char *s) {
    char *end = nullptr;
    double v = strtod(s, &end);
    size_t mul = 1;
    if (end && *end) {
        if (!strcasecmp(end, "k") || !strcasecmp(end, "kib")) mul = 1ull << 10;
        else if (!strcasecmp(end, "m") || !strcasecmp(end, "mib")) mul = 1ull << 20;
        else if (!strcasecmp(end, "g") || !strcasecmp(end, "gib")) mul = 1ull << 30;
        else return 0;
    }
    return (size_t)(v * (double)mul);
}

static void print_common() {
    size_t f = 0, t = 0;
    if (cudaMemGetInfo(&f, &t) != cudaSuccess) t = 0;
    printf(" preloaded=%d total_mib=%zu\n", preloaded(), t >> 20);
}

static int mode_launch(long n) {
    CK(cudaFree(0));
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    for (int i = 0; i < 2000; ++i) empty_kernel<<<1, 1, 0, s>>>();
    CK(cudaGetLastError());
    CK(cudaStreamSynchronize(s));
    double t0 = now_s();
    for (long i = 0; i < n; ++i) empty_kernel<<<1, 1, 0, s>>>();
    CK(cudaGetLastError());
    CK(cudaStreamSynchronize(s));
    double dt = now_s() - t0;
    printf("mode=launch n=%ld seconds=%.6f launches_per_s=%.1f", n, dt, (double)n / dt);
    print_common();
    CK(cudaStreamDestroy(s));
    return 0;
}

static int mode_mallocfree(long n, size_t size) {
    CK(cudaFree(0));
    void *p = nullptr;
    for (int i = 0; i < 20; ++i) {
        CK(cudaMalloc(&p, size));
        CK(cudaFree(p));
    }
    double t0 = now_s();
    for (long i = 0; i < n; ++i) {
        CK(cudaMalloc(&p, size));
        CK(cudaFree(p));
    }
    double dt = now_s() - t0;
    printf("mode=mallocfree n=%ld size=%zu seconds=%.6f pairs_per_s=%.1f", n, size, dt, (double)n / dt);
    print_common();
    return 0;
}

static int mode_startup() {
    double t0 = now_s();
    CK(cudaFree(0));
    empty_kernel<<<1, 1>>>();
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    double dt = now_s() - t0;
    printf("mode=startup in_process_ms=%.3f", dt * 1e3);
    print_common();
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, nullptr, _IOLBF, 0);
    if (argc >= 3 && !strcmp(argv[1], "launch")) return mode_launch(atol(argv[2]));
    if (argc >= 4 && !strcmp(argv[1], "mallocfree")) {
        size_t sz = parse_size(argv[3]);
        if (sz == 0) { fprintf(stderr, "overhead: bad size %s\n", argv[3]); return 2; }
        return mode_mallocfree(atol(argv[2]), sz);
    }
    if (argc >= 2 && !strcmp(argv[1], "startup")) return mode_startup();
    fprintf(stderr, "usage: overhead launch N | mallocfree N SIZE | startup\n");
    return 2;
}
