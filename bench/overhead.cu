// overhead.cu: micro-benchmarks for the cost of the gpuslice interposer.
// Build: nvcc -O2 -o /tmp/overhead bench/overhead.cu
// Modes (one line of key=value output each; exit 0 on success, 2 on CUDA error):
//   overhead launch N [B]         N empty <<<1,1>>> launches on one stream in B
//                                 batches (default 20), each followed by
//                                 cudaStreamSynchronize: launches_per_s= (median
//                                 over batches; all_per_s= is N / total time;
//                                 cpu_us_per_launch= the launching thread's CPU
//                                 time in the launch loops, synchronisations apart,
//                                 per launch: a wait that sleeps costs none)
//   overhead mallocfree N SIZE [B] N cudaMalloc+cudaFree pairs of SIZE bytes in B
//                                 batches (default 10; SIZE accepts KiB/MiB/GiB
//                                 suffixes): pairs_per_s= (median over batches)
//   overhead startup              cudaFree(0) + one trivial kernel + sync, then exit:
//                                 in_process_ms= (from main(); the runner also
//                                 measures the whole process's wall time)
// launch and mallocfree first warm up for 0.3 s (OVERHEAD_WARMUP_S).
// Every mode also prints preloaded=<0|1> (libgpuslice mapped) and total_mib=
// (cudaMemGetInfo total: the slice limit when one applies).

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <strings.h>

#include <algorithm>
#include <vector>

__global__ void empty_kernel() {}

static double g_warmup_s = 0.3;  // OVERHEAD_WARMUP_S overrides

static double now_s() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double thread_cpu_s() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
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

static double median(std::vector<double> v) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void print_common() {
    size_t f = 0, t = 0;
    if (cudaMemGetInfo(&f, &t) != cudaSuccess) t = 0;
    printf(" preloaded=%d total_mib=%zu\n", preloaded(), t >> 20);
}

static int mode_launch(long n, int batches) {
    CK(cudaFree(0));
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    // Warm up for a fixed time, not a fixed count: the GPU and the CPU need a
    // moment under load before their clocks settle.
    double w0 = now_s();
    do {
        for (int i = 0; i < 1000; ++i) empty_kernel<<<1, 1, 0, s>>>();
        CK(cudaStreamSynchronize(s));
    } while (now_s() - w0 < g_warmup_s);
    CK(cudaGetLastError());
    long per = n / batches > 0 ? n / batches : 1;
    std::vector<double> rates;
    double total = 0.0, launch_cpu = 0.0;
    for (int b = 0; b < batches; ++b) {
        double t0 = now_s();
        double c0 = thread_cpu_s();
        for (long i = 0; i < per; ++i) empty_kernel<<<1, 1, 0, s>>>();
        launch_cpu += thread_cpu_s() - c0;
        CK(cudaStreamSynchronize(s));
        double dt = now_s() - t0;
        total += dt;
        rates.push_back((double)per / dt);
    }
    CK(cudaGetLastError());
    printf("mode=launch n=%ld batches=%d seconds=%.6f launches_per_s=%.1f all_per_s=%.1f "
           "cpu_us_per_launch=%.3f",
           per * batches, batches, total, median(rates), (double)(per * batches) / total,
           launch_cpu * 1e6 / (double)(per * batches));
    print_common();
    CK(cudaStreamDestroy(s));
    return 0;
}

static int mode_mallocfree(long n, size_t size, int batches) {
    CK(cudaFree(0));
    void *p = nullptr;
    double w0 = now_s();
    do {
        for (int i = 0; i < 20; ++i) {
            CK(cudaMalloc(&p, size));
            CK(cudaFree(p));
        }
    } while (now_s() - w0 < g_warmup_s);
    long per = n / batches > 0 ? n / batches : 1;
    std::vector<double> rates;
    double total = 0.0;
    for (int b = 0; b < batches; ++b) {
        double t0 = now_s();
        for (long i = 0; i < per; ++i) {
            CK(cudaMalloc(&p, size));
            CK(cudaFree(p));
        }
        double dt = now_s() - t0;
        total += dt;
        rates.push_back((double)per / dt);
    }
    printf("mode=mallocfree n=%ld batches=%d size=%zu seconds=%.6f pairs_per_s=%.1f all_per_s=%.1f",
           per * batches, batches, size, total, median(rates), (double)(per * batches) / total);
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
    if (const char *w = getenv("OVERHEAD_WARMUP_S")) g_warmup_s = atof(w);
    if (argc >= 3 && !strcmp(argv[1], "launch")) {
        int b = argc >= 4 ? atoi(argv[3]) : 20;
        return mode_launch(atol(argv[2]), b > 0 ? b : 1);
    }
    if (argc >= 4 && !strcmp(argv[1], "mallocfree")) {
        size_t sz = parse_size(argv[3]);
        if (sz == 0) { fprintf(stderr, "overhead: bad size %s\n", argv[3]); return 2; }
        int b = argc >= 5 ? atoi(argv[4]) : 10;
        return mode_mallocfree(atol(argv[2]), sz, b > 0 ? b : 1);
    }
    if (argc >= 2 && !strcmp(argv[1], "startup")) return mode_startup();
    fprintf(stderr, "usage: overhead launch N [BATCHES] | mallocfree N SIZE [BATCHES] | startup\n");
    return 2;
}
