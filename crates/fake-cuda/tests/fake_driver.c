/* Drives the fake libcuda.so.1 / libnvidia-ml.so.1 through dlopen, the way an application
 * (or the gpuslice interposer) would. Usage: fake_driver basic|features|visible|empty|timing.
 * Prints "OK <mode>" and exits 0 on success; prints the failing line otherwise. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef int CUresult;
typedef unsigned long long u64;
static void *cuda, *nvml;

static void *sym_in(void *lib, const char *name) {
    void *p = dlsym(lib, name);
    if (!p) { fprintf(stderr, "missing symbol %s\n", name); exit(2); }
    return p;
}
#define FN(name, ...) ((CUresult(*)(__VA_ARGS__))sym_in(cuda, #name))
#define NV(name, ...) ((unsigned(*)(__VA_ARGS__))sym_in(nvml, #name))
#define CHECK(expr) do { long long _r = (long long)(expr); if (_r != 0) { \
    fprintf(stderr, "%s:%d: %s = %lld\n", __FILE__, __LINE__, #expr, _r); exit(1); } } while (0)
#define EXPECT(cond) do { if (!(cond)) { \
    fprintf(stderr, "%s:%d: expectation failed: %s\n", __FILE__, __LINE__, #cond); exit(1); } } while (0)
#define MiB (1024ull * 1024ull)

typedef struct { unsigned pid; u64 used; unsigned gi, ci; } proc_v3;
typedef struct { u64 total, free, used; } nvml_mem;

static u64 nvml_pid_usage(unsigned dev_index, unsigned pid) {
    void *dev;
    CHECK(NV(nvmlDeviceGetHandleByIndex_v2, unsigned, void **)(dev_index, &dev));
    unsigned n = 0;
    unsigned r = NV(nvmlDeviceGetComputeRunningProcesses_v3, void *, unsigned *, proc_v3 *)(dev, &n, NULL);
    EXPECT(r == 0 || r == 7);
    if (n == 0) return 0;
    proc_v3 *infos = calloc(n, sizeof *infos);
    unsigned small = 0;
    if (n > 0) EXPECT(NV(nvmlDeviceGetComputeRunningProcesses_v3, void *, unsigned *, proc_v3 *)(dev, &small, infos) == 7);
    CHECK(NV(nvmlDeviceGetComputeRunningProcesses_v3, void *, unsigned *, proc_v3 *)(dev, &n, infos));
    u64 used = 0;
    for (unsigned i = 0; i < n; i++) if (infos[i].pid == pid) used = infos[i].used;
    free(infos);
    return used;
}

static void open_libs(void) {
    cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!cuda) { fprintf(stderr, "dlopen libcuda.so.1: %s\n", dlerror()); exit(2); }
    nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!nvml) fprintf(stderr, "note: no libnvidia-ml.so.1 (%s); NVML checks skipped\n", dlerror());
}

static void *primary_ctx(int ordinal) {
    int dev; void *ctx;
    CHECK(FN(cuDeviceGet, int *, int)(&dev, ordinal));
    CHECK(FN(cuDevicePrimaryCtxRetain, void **, int)(&ctx, dev));
    CHECK(FN(cuCtxSetCurrent, void *)(ctx));
    return ctx;
}

static int basic(void) {
    void *pfn = NULL; int status = -1;
    EXPECT(FN(cuMemGetInfo_v2, size_t *, size_t *)(NULL, NULL) == 3); /* before cuInit */
    CHECK(FN(cuGetProcAddress_v2, const char *, void **, int, u64, int *)("cuMemAlloc", &pfn, 12000, 0, &status));
    EXPECT(status == 0 && pfn == dlsym(cuda, "cuMemAlloc_v2"));
    EXPECT(FN(cuGetProcAddress_v2, const char *, void **, int, u64, int *)("cuNope", &pfn, 12000, 0, &status) == 500);
    EXPECT(pfn == NULL && status == 1);
    EXPECT(FN(cuGetProcAddress_v2, const char *, void **, int, u64, int *)("cuMemPoolCreate", &pfn, 11000, 0, &status) == 500);
    EXPECT(status == 2);
    CHECK(FN(cuGetProcAddress_v2, const char *, void **, int, u64, int *)("cuMemAllocAsync", &pfn, 12000, 2, &status));
    EXPECT(pfn == dlsym(cuda, "cuMemAllocAsync_ptsz"));
    int version = 0;
    CHECK(FN(cuDriverGetVersion, int *)(&version));
    EXPECT(version == 13000);

    CHECK(FN(cuInit, unsigned)(0));
    primary_ctx(0);
    size_t free0, total, free1, free2;
    CHECK(FN(cuMemGetInfo_v2, size_t *, size_t *)(&free0, &total));
    u64 dptr = 0;
    CHECK(FN(cuMemAlloc_v2, u64 *, size_t)(&dptr, 100 * MiB));
    EXPECT(dptr != 0);
    CHECK(FN(cuMemGetInfo_v2, size_t *, size_t *)(&free1, &total));
    EXPECT(free0 - free1 == 100 * MiB);
    if (nvml) {
        CHECK(NV(nvmlInit_v2, void)());
        u64 mine = nvml_pid_usage(0, getpid());
        EXPECT(mine == 100 * MiB + 300 * MiB); /* allocation + context */
        void *dev; nvml_mem m;
        CHECK(NV(nvmlDeviceGetHandleByIndex_v2, unsigned, void **)(0, &dev));
        CHECK(NV(nvmlDeviceGetMemoryInfo, void *, nvml_mem *)(dev, &m));
        EXPECT(m.total == total && m.free == free1 && m.used == total - free1);
    }
    EXPECT(FN(cuMemAlloc_v2, u64 *, size_t)(&dptr, 0) == 1);
    u64 big;
    EXPECT(FN(cuMemAlloc_v2, u64 *, size_t)(&big, free1 + 1) == 2);
    CHECK(FN(cuMemFree_v2, u64)(dptr));
    EXPECT(FN(cuMemFree_v2, u64)(dptr) == 1);
    CHECK(FN(cuMemGetInfo_v2, size_t *, size_t *)(&free2, &total));
    EXPECT(free2 == free0);
    /* Releasing the last primary-context reference gives the context memory back. */
    CHECK(FN(cuDevicePrimaryCtxRelease_v2, int)(0));
    EXPECT(FN(cuMemGetInfo_v2, size_t *, size_t *)(&free2, &total) == 201);
    if (nvml) EXPECT(nvml_pid_usage(0, getpid()) == 0);
    puts("OK basic");
    return 0;
}

typedef struct { int type, handle_types, loc_type, loc_id; void *win32; size_t max_size; unsigned short usage; unsigned char reserved[54]; } pool_props;
typedef struct { int type, req_handle_types, loc_type, loc_id; void *win32; unsigned char flags[8]; } alloc_prop;
typedef struct { pool_props props; const void *access; size_t naccess; size_t bytesize; u64 dptr; } alloc_node_params;
typedef struct { size_t width, height; int format; unsigned channels; } array_desc;

static size_t free_now(void) {
    size_t f, t;
    CHECK(FN(cuMemGetInfo_v2, size_t *, size_t *)(&f, &t));
    return f;
}

static int features(void) {
    CHECK(FN(cuInit, unsigned)(0));
    primary_ctx(0);
    size_t base = free_now();

    /* Fault injection: FAKE_CUDA_FAIL=cuMemAlloc_v2@2=2 */
    u64 a, b;
    CHECK(FN(cuMemAlloc_v2, u64 *, size_t)(&a, 1));
    EXPECT(FN(cuMemAlloc_v2, u64 *, size_t)(&b, 1) == 2);
    EXPECT(base - free_now() == 2 * MiB); /* granularity */
    CHECK(FN(cuMemFree_v2, u64)(a));

    /* Created contexts charge context memory and free what they own when destroyed. */
    void *ctx2, *cur;
    CHECK(FN(cuCtxCreate_v2, void **, unsigned, int)(&ctx2, 0, 0));
    CHECK(FN(cuCtxGetCurrent, void **)(&cur));
    EXPECT(cur == ctx2 && base - free_now() == 300 * MiB);
    CHECK(FN(cuMemAlloc_v2, u64 *, size_t)(&a, 10 * MiB));
    EXPECT(base - free_now() == 310 * MiB);
    CHECK(FN(cuCtxDestroy_v2, void *)(ctx2));
    EXPECT(base == free_now());

    /* Pitch: 1000 bytes -> pitch 1024, 3000 rows -> 3000 KiB -> 4 MiB physical. */
    size_t pitch;
    CHECK(FN(cuMemAllocPitch_v2, u64 *, size_t *, size_t, size_t, unsigned)(&a, &pitch, 1000, 3000, 4));
    EXPECT(pitch == 1024 && base - free_now() == 4 * MiB);
    u64 rb; size_t rs;
    CHECK(FN(cuMemGetAddressRange_v2, u64 *, size_t *, u64)(&rb, &rs, a + 100));
    EXPECT(rb == a && rs == 1024 * 3000);
    CHECK(FN(cuMemFree_v2, u64)(a));

    /* Default pool: grows by 2 MiB chunks, released at synchronisation. */
    void *pool;
    CHECK(FN(cuDeviceGetDefaultMemPool, void **, int)(&pool, 0));
    CHECK(FN(cuMemAllocAsync, u64 *, size_t, void *)(&a, 3 * MiB, NULL));
    EXPECT(base - free_now() == 4 * MiB);
    u64 v = 0;
    CHECK(FN(cuMemPoolGetAttribute, void *, int, void *)(pool, 5, &v));
    EXPECT(v == 4 * MiB);
    CHECK(FN(cuMemFreeAsync, u64, void *)(a, NULL));
    CHECK(FN(cuMemPoolGetAttribute, void *, int, void *)(pool, 7, &v));
    EXPECT(v == 0);
    EXPECT(base - free_now() == 4 * MiB); /* still reserved */
    CHECK(FN(cuStreamSynchronize, void *)(NULL));
    EXPECT(base == free_now());
    u64 thr = 64 * MiB;
    CHECK(FN(cuMemPoolSetAttribute, void *, int, void *)(pool, 4, &thr));
    CHECK(FN(cuMemAllocAsync, u64 *, size_t, void *)(&a, 10 * MiB, NULL));
    CHECK(FN(cuMemFreeAsync, u64, void *)(a, NULL));
    CHECK(FN(cuCtxSynchronize, void)());
    EXPECT(base - free_now() == 10 * MiB);
    CHECK(FN(cuMemPoolTrimTo, void *, size_t)(pool, 0));
    EXPECT(base == free_now());

    /* Explicit pool with cuMemAllocFromPoolAsync. */
    pool_props pp; memset(&pp, 0, sizeof pp);
    pp.type = 1; pp.loc_type = 1; pp.loc_id = 0;
    void *mypool;
    CHECK(FN(cuMemPoolCreate, void **, const pool_props *)(&mypool, &pp));
    CHECK(FN(cuMemAllocFromPoolAsync, u64 *, size_t, void *, void *)(&a, 512, mypool, NULL));
    EXPECT(base - free_now() == 2 * MiB);
    CHECK(FN(cuMemFreeAsync, u64, void *)(a, NULL));
    CHECK(FN(cuMemPoolDestroy, void *)(mypool));
    EXPECT(base == free_now());

    /* Graph with a memory alloc node that is not freed inside the graph. */
    void *graph, *node, *exec;
    CHECK(FN(cuGraphCreate, void **, unsigned)(&graph, 0));
    alloc_node_params np; memset(&np, 0, sizeof np);
    np.props.type = 1; np.props.loc_type = 1; np.bytesize = 5 * MiB;
    CHECK(FN(cuGraphAddMemAllocNode, void **, void *, void **, size_t, alloc_node_params *)(&node, graph, NULL, 0, &np));
    EXPECT(np.dptr != 0);
    int type = -1;
    CHECK(FN(cuGraphNodeGetType, void *, int *)(node, &type));
    EXPECT(type == 10);
    size_t nn = 0;
    CHECK(FN(cuGraphGetNodes, void *, void **, size_t *)(graph, NULL, &nn));
    EXPECT(nn == 1);
    CHECK(FN(cuGraphInstantiateWithFlags, void **, void *, u64)(&exec, graph, 0));
    CHECK(FN(cuGraphLaunch, void *, void *)(exec, NULL));
    EXPECT(base - free_now() == 6 * MiB);
    CHECK(FN(cuDeviceGetGraphMemAttribute, int, int, void *)(0, 0, &v));
    EXPECT(v == 5 * MiB);
    EXPECT(FN(cuGraphLaunch, void *, void *)(exec, NULL) == 1); /* allocation outstanding */
    CHECK(FN(cuMemFreeAsync, u64, void *)(np.dptr, NULL));
    CHECK(FN(cuGraphLaunch, void *, void *)(exec, NULL));
    CHECK(FN(cuMemFreeAsync, u64, void *)(np.dptr, NULL));
    EXPECT(base - free_now() == 6 * MiB); /* reserved until trimmed */
    CHECK(FN(cuDeviceGraphMemTrim, int)(0));
    EXPECT(base == free_now());
    CHECK(FN(cuGraphExecDestroy, void *)(exec));
    CHECK(FN(cuGraphDestroy, void *)(graph));

    /* Stream capture turns cuMemAllocAsync into an alloc node. */
    void *stream, *cap;
    int st = -1;
    CHECK(FN(cuStreamCreate, void **, unsigned)(&stream, 0));
    CHECK(FN(cuStreamBeginCapture_v2, void *, int)(stream, 0));
    CHECK(FN(cuStreamIsCapturing, void *, int *)(stream, &st));
    EXPECT(st == 1);
    CHECK(FN(cuMemAllocAsync, u64 *, size_t, void *)(&a, MiB, stream));
    CHECK(FN(cuMemFreeAsync, u64, void *)(a, stream));
    CHECK(FN(cuStreamEndCapture, void *, void **)(stream, &cap));
    EXPECT(base == free_now());
    CHECK(FN(cuGraphGetNodes, void *, void **, size_t *)(cap, NULL, &nn));
    EXPECT(nn == 2);
    CHECK(FN(cuGraphInstantiateWithFlags, void **, void *, u64)(&exec, cap, 0));
    CHECK(FN(cuGraphUpload, void *, void *)(exec, stream));
    EXPECT(base - free_now() == 2 * MiB);
    CHECK(FN(cuGraphLaunch, void *, void *)(exec, stream));
    CHECK(FN(cuGraphLaunch, void *, void *)(exec, stream)); /* freed inside: relaunchable */
    CHECK(FN(cuDeviceGraphMemTrim, int)(0));
    EXPECT(base == free_now());

    /* Arrays: 1000x1000 float4 = 16,000,000 bytes -> 16 MiB physical. */
    array_desc ad = {1000, 1000, 0x20, 4};
    void *arr;
    CHECK(FN(cuArrayCreate_v2, void **, const array_desc *)(&arr, &ad));
    EXPECT(base - free_now() == 16 * MiB);
    CHECK(FN(cuArrayDestroy, void *)(arr));

    /* Modules charge context memory. */
    void *mod, *fn;
    CHECK(FN(cuModuleLoadData, void **, const void *)(&mod, "fake image"));
    EXPECT(base - free_now() == 2 * MiB);
    CHECK(FN(cuModuleGetFunction, void **, void *, const char *)(&fn, mod, "kernel"));
    CHECK(FN(cuLaunchKernel, void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *, void **, void **)(fn, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL));
    CHECK(FN(cuModuleUnload, void *)(mod));
    EXPECT(base == free_now());

    /* VMM: create, map, export to a child process that imports without new charge. */
    alloc_prop ap; memset(&ap, 0, sizeof ap);
    ap.type = 1; ap.req_handle_types = 1; ap.loc_type = 1; ap.loc_id = 0;
    size_t gran;
    CHECK(FN(cuMemGetAllocationGranularity, size_t *, const alloc_prop *, int)(&gran, &ap, 0));
    EXPECT(gran == 2 * MiB);
    EXPECT(FN(cuMemCreate, u64 *, size_t, const alloc_prop *, u64)(&v, MiB, &ap, 0) == 1);
    u64 h; u64 va;
    CHECK(FN(cuMemCreate, u64 *, size_t, const alloc_prop *, u64)(&h, 8 * MiB, &ap, 0));
    CHECK(FN(cuMemAddressReserve, u64 *, size_t, size_t, u64, u64)(&va, 8 * MiB, 0, 0, 0));
    CHECK(FN(cuMemMap, u64, size_t, size_t, u64, u64)(va, 8 * MiB, 0, h, 0));
    CHECK(FN(cuMemRelease, u64)(h));
    EXPECT(base - free_now() == 8 * MiB); /* still mapped */
    int fd = -1;
    u64 h2;
    CHECK(FN(cuMemRetainAllocationHandle, u64 *, void *)(&h2, (void *)(uintptr_t)(va + 4096)));
    EXPECT(h2 == h);
    CHECK(FN(cuMemExportToShareableHandle, void *, u64, int, u64)(&fd, h2, 1, 0));
    EXPECT(fd >= 0);
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        size_t before = free_now();
        u64 imp;
        CHECK(FN(cuMemImportFromShareableHandle, u64 *, void *, int)(&imp, (void *)(uintptr_t)fd, 1));
        u64 cva;
        CHECK(FN(cuMemAddressReserve, u64 *, size_t, size_t, u64, u64)(&cva, 8 * MiB, 0, 0, 0));
        CHECK(FN(cuMemMap, u64, size_t, size_t, u64, u64)(cva, 8 * MiB, 0, imp, 0));
        EXPECT(free_now() == before);
        if (nvml) { CHECK(NV(nvmlInit_v2, void)()); EXPECT(nvml_pid_usage(0, getpid()) == 0); }
        _exit(0);
    }
    int wst;
    EXPECT(waitpid(child, &wst, 0) == child && WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
    CHECK(FN(cuMemRelease, u64)(h2));
    CHECK(FN(cuMemUnmap, u64, size_t)(va, 8 * MiB));
    CHECK(FN(cuMemAddressFree, u64, size_t)(va, 8 * MiB));
    EXPECT(base == free_now());
    puts("OK features");
    return 0;
}

static int visible(void) {
    /* FAKE_GPU_COUNT=3, CUDA_VISIBLE_DEVICES=GPU-00000000-0000-4000-8000-000000000002,0,9,1 */
    CHECK(FN(cuInit, unsigned)(0));
    int n = 0, bus = 0;
    CHECK(FN(cuDeviceGetCount, int *)(&n));
    EXPECT(n == 2);
    CHECK(FN(cuDeviceGetAttribute, int *, int, int)(&bus, 33, 0));
    EXPECT(bus == 3);
    unsigned char uuid[16];
    CHECK(FN(cuDeviceGetUuid_v2, unsigned char *, int)(uuid, 1));
    EXPECT(uuid[15] == 0 && uuid[6] == 0x40);
    char pci[32];
    CHECK(FN(cuDeviceGetPCIBusId, char *, int, int)(pci, sizeof pci, 0));
    EXPECT(strcmp(pci, "0000:03:00.0") == 0);
    primary_ctx(0);
    u64 a;
    CHECK(FN(cuMemAlloc_v2, u64 *, size_t)(&a, 64 * MiB));
    if (nvml) {
        CHECK(NV(nvmlInit_v2, void)());
        unsigned count = 0;
        CHECK(NV(nvmlDeviceGetCount_v2, unsigned *)(&count));
        EXPECT(count == 3); /* NVML ignores CUDA_VISIBLE_DEVICES */
        EXPECT(nvml_pid_usage(2, getpid()) == 364 * MiB);
        EXPECT(nvml_pid_usage(0, getpid()) == 0);
    }
    puts("OK visible");
    return 0;
}

static int empty(void) {
    /* CUDA_VISIBLE_DEVICES= hides every device; FAKE_NVML_FAIL=nvmlInit_v2@1=999 */
    EXPECT(FN(cuInit, unsigned)(0) == 100);
    int n = -1;
    EXPECT(FN(cuDeviceGetCount, int *)(&n) == 3);
    if (nvml) {
        EXPECT(NV(nvmlInit_v2, void)() == 999);
        CHECK(NV(nvmlInit_v2, void)());
        unsigned count = 0;
        CHECK(NV(nvmlDeviceGetCount_v2, unsigned *)(&count));
        EXPECT(count == 1);
        CHECK(NV(nvmlShutdown, void)());
        EXPECT(NV(nvmlDeviceGetCount_v2, unsigned *)(&count) == 1);
    }
    puts("OK empty");
    return 0;
}

static int timing(void) {
    /* FAKE_CUDA_KERNEL_US=1000: kernels take virtual time; queries follow it. */
    CHECK(FN(cuInit, unsigned)(0));
    primary_ctx(0);
    u64 (*now)(void) = (u64(*)(void))sym_in(cuda, "fakeCudaClockNow");
    void (*sleep_ns)(u64) = (void (*)(u64))sym_in(cuda, "fakeCudaClockSleep");
    void *stream, *mod, *fn, *ev;
    CHECK(FN(cuStreamCreate, void **, unsigned)(&stream, 0));
    CHECK(FN(cuEventCreate, void **, unsigned)(&ev, 0));
    CHECK(FN(cuModuleLoadData, void **, const void *)(&mod, "fake image"));
    CHECK(FN(cuModuleGetFunction, void **, void *, const char *)(&fn, mod, "kernel"));
    CHECK(FN(cuStreamQuery, void *)(stream));
    u64 t0 = now();
    for (int i = 0; i < 3; i++)
        CHECK(FN(cuLaunchKernel, void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *, void **, void **)(fn, 1, 1, 1, 32, 1, 1, 0, stream, NULL, NULL));
    CHECK(FN(cuEventRecord, void *, void *)(ev, stream));
    /* 3 ms of work queued: neither the stream nor the event is done yet (600: not ready). */
    EXPECT(FN(cuStreamQuery, void *)(stream) == 600);
    EXPECT(FN(cuEventQuery, void *)(ev) == 600);
    /* Another stream is idle meanwhile. */
    void *other;
    CHECK(FN(cuStreamCreate, void **, unsigned)(&other, 0));
    CHECK(FN(cuStreamQuery, void *)(other));
    sleep_ns(t0 + 3100000 - now());
    CHECK(FN(cuStreamQuery, void *)(stream));
    CHECK(FN(cuEventQuery, void *)(ev));
    puts("OK timing");
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    open_libs();
    if (!strcmp(argv[1], "basic")) return basic();
    if (!strcmp(argv[1], "features")) return features();
    if (!strcmp(argv[1], "visible")) return visible();
    if (!strcmp(argv[1], "empty")) return empty();
    if (!strcmp(argv[1], "timing")) return timing();
    return 2;
}
