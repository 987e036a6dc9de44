// What each gpuslice hook adds to the driver function it wraps, in nanoseconds, measured
// in one process: the hooked entry point and the real one are called alternately, in
// batches, over many rounds, so that both see the same GPU, clocks and cache state.
//
//   gcc -O2 -o /tmp/hook_cost bench/hook_cost.c -I/usr/local/cuda/include -lcuda -ldl
//   gpuslice run --memory 70GiB -- /tmp/hook_cost [rounds]
//   gpuslice run --memory 70GiB --compute 99 -- /tmp/hook_cost [rounds]
//
// The hooked entry points are what a program gets: the preloaded `cuGetProcAddress_v2`
// (the CUDA runtime asks it for every driver function). The real ones come from the
// driver library itself, looked up with glibc's own `dlsym` (reached through `dlvsym`,
// which gpuslice does not wrap), so the interposer cannot substitute its hooks.
//
// Launches and graph launches take turns in chunks of 200 and 50 within each round (the
// stream is waited for once per round): a VM's moment-to-moment noise, which swamps a
// difference of 100 ns between whole batches, falls on both alike.
//
// Prints one row per path: median ns per call hooked and real, the median of the paired
// differences (hooked - real, per round) and its spread (the 10th and 90th percentile of
// the differences): a difference inside that spread is noise.
#define _GNU_SOURCE
#include <cuda.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *PTX =
    ".version 7.0\n.target sm_70\n.address_size 64\n"
    ".visible .entry empty()\n{\n ret;\n}\n";

#define CHECK(x)                                                             \
    do {                                                                     \
        CUresult r_ = (x);                                                   \
        if (r_ != CUDA_SUCCESS) {                                            \
            fprintf(stderr, "%s:%d %s failed: %d\n", __FILE__, __LINE__, #x, \
                    (int)r_);                                                \
            exit(1);                                                         \
        }                                                                    \
    } while (0)

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

typedef void *(*dlsym_fn)(void *, const char *);
typedef CUresult (*launch_fn)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                              unsigned, unsigned, CUstream, void **, void **);
typedef CUresult (*graph_launch_fn)(CUgraphExec, CUstream);
typedef CUresult (*alloc_fn)(CUdeviceptr *, size_t);
typedef CUresult (*free_fn)(CUdeviceptr);
typedef CUresult (*info_fn)(size_t *, size_t *);
typedef CUresult (*sync_fn)(CUstream);

struct entry {
    void *hooked;
    void *real;
};

static void *real_driver;
static dlsym_fn glibc_dlsym;

static struct entry lookup(const char *name, const char *versioned) {
    struct entry e;
    CUdriverProcAddressQueryResult status;
    CHECK(cuGetProcAddress_v2(name, &e.hooked, 12000, CU_GET_PROC_ADDRESS_DEFAULT, &status));
    e.real = glibc_dlsym(real_driver, versioned);
    if (!e.hooked || !e.real) {
        fprintf(stderr, "cannot find %s\n", name);
        exit(1);
    }
    return e;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double *v, int n, double p) {
    double *c = malloc(n * sizeof *c);
    memcpy(c, v, n * sizeof *c);
    qsort(c, n, sizeof *c, cmp);
    double r = c[(int)(p * (n - 1) + 0.5)];
    free(c);
    return r;
}

static void row(const char *label, int hooked_here, double *h, double *r, int rounds) {
    double *d = malloc(rounds * sizeof *d);
    for (int i = 0; i < rounds; i++) d[i] = h[i] - r[i];
    printf("%-34s %-6s %9.1f %9.1f %+9.1f  [%+.1f, %+.1f]  %+6.1f%%\n", label,
           hooked_here ? "hook" : "real", pct(h, rounds, 0.5), pct(r, rounds, 0.5),
           pct(d, rounds, 0.5), pct(d, rounds, 0.1), pct(d, rounds, 0.9),
           100.0 * pct(d, rounds, 0.5) / pct(r, rounds, 0.5));
    free(d);
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 200;
    if (rounds < 10) rounds = 10;
    const int LAUNCHES = 2000, CHUNKS = 10, ALLOCS = 200, INFOS = 2000;

    glibc_dlsym = (dlsym_fn)dlvsym(RTLD_DEFAULT, "dlsym", "GLIBC_2.34");
    if (!glibc_dlsym) glibc_dlsym = (dlsym_fn)dlvsym(RTLD_DEFAULT, "dlsym", "GLIBC_2.2.5");
    real_driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (!real_driver) real_driver = dlopen("libcuda.so.1", RTLD_NOW);
    if (!glibc_dlsym || !real_driver) {
        fprintf(stderr, "cannot reach glibc's dlsym or libcuda.so.1\n");
        return 1;
    }

    CUdevice dev;
    CUcontext ctx;
    CUmodule mod;
    CUfunction fn;
    CUstream stream;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    CHECK(cuModuleLoadData(&mod, PTX));
    CHECK(cuModuleGetFunction(&fn, mod, "empty"));
    CHECK(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));

    struct entry launch = lookup("cuLaunchKernel", "cuLaunchKernel");
    struct entry graph = lookup("cuGraphLaunch", "cuGraphLaunch");
    struct entry alloc = lookup("cuMemAlloc", "cuMemAlloc_v2");
    struct entry release = lookup("cuMemFree", "cuMemFree_v2");
    struct entry info = lookup("cuMemGetInfo", "cuMemGetInfo_v2");

    // A graph of one empty kernel.
    CUgraph g;
    CUgraphExec exec;
    CUDA_KERNEL_NODE_PARAMS kp;
    memset(&kp, 0, sizeof kp);
    kp.func = fn;
    kp.gridDimX = kp.gridDimY = kp.gridDimZ = 1;
    kp.blockDimX = kp.blockDimY = kp.blockDimZ = 1;
    CUgraphNode node;
    CHECK(cuGraphCreate(&g, 0));
    CHECK(cuGraphAddKernelNode(&node, g, NULL, 0, &kp));
    CHECK(cuGraphInstantiate(&exec, g, 0));

    double *lh = calloc(rounds, sizeof(double)), *lr = calloc(rounds, sizeof(double));
    double *gh = calloc(rounds, sizeof(double)), *gr = calloc(rounds, sizeof(double));
    double *ah = calloc(rounds, sizeof(double)), *ar = calloc(rounds, sizeof(double));
    double *fh = calloc(rounds, sizeof(double)), *fr = calloc(rounds, sizeof(double));
    double *ih = calloc(rounds, sizeof(double)), *ir = calloc(rounds, sizeof(double));
    CUdeviceptr *ptrs = calloc(ALLOCS, sizeof(CUdeviceptr));

    for (int round = -3; round < rounds; round++) {  // three warm-up rounds
        int slot = round < 0 ? 0 : round;
        for (int pass = 0; pass < 2; pass++) {
            // Alternate which goes first, round by round.
            int use_hook = (pass == 0) == (round % 2 == 0);
            alloc_fn a = (alloc_fn)(use_hook ? alloc.hooked : alloc.real);
            free_fn f = (free_fn)(use_hook ? release.hooked : release.real);
            info_fn in = (info_fn)(use_hook ? info.hooked : info.real);

            // Launches: in chunks, the hooked and the real entry point taking turns
            // within the round, so that both see the same moment of the machine; the
            // stream is waited for once, after both (LAUNCHES each).
            if (pass == 0) {
                double t[2] = {0, 0}, g[2] = {0, 0};
                CHECK(cuStreamSynchronize(stream));
                for (int c = 0; c < 2 * CHUNKS; c++) {
                    int hook_now = (c % 2 == 0) == use_hook;
                    launch_fn lc = (launch_fn)(hook_now ? launch.hooked : launch.real);
                    double t0 = now_ns();
                    for (int i = 0; i < LAUNCHES / CHUNKS; i++)
                        CHECK(lc(fn, 1, 1, 1, 1, 1, 1, 0, stream, NULL, NULL));
                    t[hook_now] += now_ns() - t0;
                }
                CHECK(cuStreamSynchronize(stream));
                for (int c = 0; c < 2 * CHUNKS; c++) {
                    int hook_now = (c % 2 == 0) == use_hook;
                    graph_launch_fn gc = (graph_launch_fn)(hook_now ? graph.hooked : graph.real);
                    double t0 = now_ns();
                    for (int i = 0; i < LAUNCHES / 4 / CHUNKS; i++) CHECK(gc(exec, stream));
                    g[hook_now] += now_ns() - t0;
                }
                CHECK(cuStreamSynchronize(stream));
                lh[slot] = t[1] / LAUNCHES;
                lr[slot] = t[0] / LAUNCHES;
                gh[slot] = g[1] / (LAUNCHES / 4);
                gr[slot] = g[0] / (LAUNCHES / 4);
            }

            double t4 = now_ns();
            for (int i = 0; i < ALLOCS; i++) CHECK(a(&ptrs[i], 1 << 20));
            double t5 = now_ns();
            for (int i = 0; i < ALLOCS; i++) CHECK(f(ptrs[i]));
            double t6 = now_ns();
            (use_hook ? ah : ar)[slot] = (t5 - t4) / ALLOCS;
            (use_hook ? fh : fr)[slot] = (t6 - t5) / ALLOCS;

            size_t freeb, total;
            double t7 = now_ns();
            for (int i = 0; i < INFOS; i++) CHECK(in(&freeb, &total));
            double t8 = now_ns();
            (use_hook ? ih : ir)[slot] = (t8 - t7) / INFOS;
        }
    }

    printf("%d rounds; per call: %d launches, %d graph launches, %d allocs+frees of 1 MiB, "
           "%d cuMemGetInfo\n",
           rounds, LAUNCHES, LAUNCHES / 4, ALLOCS, INFOS);
    printf("%-34s %-6s %9s %9s %9s  %-18s %7s\n", "path", "given", "hook ns", "real ns",
           "added", "[p10, p90]", "added%");
    row("cuLaunchKernel (empty kernel)", launch.hooked != launch.real, lh, lr, rounds);
    row("cuGraphLaunch (1-kernel graph)", graph.hooked != graph.real, gh, gr, rounds);
    row("cuMemAlloc_v2 1 MiB", alloc.hooked != alloc.real, ah, ar, rounds);
    row("cuMemFree_v2 1 MiB", release.hooked != release.real, fh, fr, rounds);
    row("cuMemGetInfo_v2", info.hooked != info.real, ih, ir, rounds);
    return 0;
}
