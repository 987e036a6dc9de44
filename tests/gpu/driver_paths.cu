// driver_paths.cu: drives every CUDA driver-API allocation path until it
// fails, for checking gpuslice (tests/gpu/memory-checks.sh, check
// `driver-paths`). Also runs fine without the interposer: then no path hits
// its limit before --cap-mib and the paths report ok=0.
//
// Build: nvcc -O2 -o /tmp/driver_paths tests/gpu/driver_paths.cu -lcuda
//   (nvcc links the CUDA runtime statically by default; it is used only for
//    cudaGetDriverEntryPointByVersion.)
// Run:   gpuslice run --memory 4GiB -- /tmp/driver_paths --expect-hooked --expect-total-mib 4096
//
// Output, one line per path:
//   path=<name> obtained_mib=<n> oom_code=<CUresult name|none> free_after_mib=<n> ok=<0|1> [extra]
// and entry-point lines `entry ...`, then `ALL_OK` or `SOME_FAILED`
// (exit 0 / 1; 2 when the driver cannot even be initialised).
//
// Per allocation path: allocate in chunks until the call fails (or --cap-mib),
// the failure must be CUDA_ERROR_OUT_OF_MEMORY, at that point cuMemGetInfo's
// free must be <= total - obtained, obtained must be <= the free memory at the
// start of the path (i.e. the limit minus context and leftovers) and >= 2 GiB
// for the plain paths; after freeing everything, free must be back to within
// 64 MiB of the start.

#include <cuda.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static const size_t kMiB = 1ull << 20;
static const size_t kGiB = 1ull << 30;

static CUdevice g_dev = 0;
static CUcontext g_ctx = nullptr;
static CUstream g_stream = nullptr;
static size_t g_total = 0;      // cuMemGetInfo total at start: the slice limit under gpuslice
static size_t g_cap = 0;        // a path stops after this many bytes even without a failure
static bool g_all_ok = true;
static bool g_expect_hooked = false;
static long g_expect_total_mib = -1;
static size_t g_graph_bytes = 1 * kGiB;
static std::string g_only;      // comma list of path names; empty = all

static const char *errname(CUresult r) {
    const char *s = nullptr;
    if (cuGetErrorName(r, &s) != CUDA_SUCCESS || s == nullptr) return "CUDA_ERROR_UNKNOWN_CODE";
    return s;
}

static size_t free_now() {
    size_t f = 0, t = 0;
    CUresult r = cuMemGetInfo(&f, &t);
    if (r != CUDA_SUCCESS) {
        fprintf(stderr, "driver_paths: cuMemGetInfo failed: %s\n", errname(r));
        return 0;
    }
    return f;
}

static bool selected(const char *name) {
    if (g_only.empty()) return true;
    std::string hay = "," + g_only + ",";
    return hay.find(std::string(",") + name + ",") != std::string::npos;
}

static size_t round_up(size_t x, size_t m) { return m ? (x + m - 1) / m * m : x; }

struct Path {
    std::string name;
    size_t start_free = 0;
    size_t obtained = 0;
    size_t free_at_fail = 0;
    size_t free_after = 0;
    bool failed = false;          // an allocation call returned an error
    CUresult code = CUDA_SUCCESS; // that error
    size_t min_obtained = 2 * kGiB;
    bool expect_oom = true;
    std::string note;
    std::string why;              // reasons for ok=0

    explicit Path(const char *n) : name(n) { start_free = free_now(); }

    void fail_with(CUresult r, const char *where) {
        failed = true;
        code = r;
        if (where && *where) note += std::string("fail_at=") + where + " ";
    }

    void report(bool extra_ok = true) {
        bool ok = extra_ok;
        if (expect_oom) {
            if (!failed) { ok = false; why += "no_failure_before_cap,"; }
            else if (code != CUDA_ERROR_OUT_OF_MEMORY) { ok = false; why += "not_OOM,"; }
            if (failed && (obtained > g_total || free_at_fail > g_total - obtained)) {
                ok = false; why += "free_at_oom_gt_total_minus_obtained,";
            }
            if (obtained > start_free) { ok = false; why += "obtained_gt_start_free,"; }
            if (obtained < min_obtained) { ok = false; why += "obtained_lt_min,"; }
        }
        if (free_after + 64 * kMiB < start_free) { ok = false; why += "free_not_returned,"; }
        if (!ok) g_all_ok = false;
        printf("path=%s obtained_mib=%zu oom_code=%s free_after_mib=%zu ok=%d start_free_mib=%zu free_at_oom_mib=%zu%s%s%s%s\n",
               name.c_str(), obtained / kMiB, failed ? errname(code) : "none", free_after / kMiB, ok ? 1 : 0,
               start_free / kMiB, free_at_fail / kMiB,
               note.empty() ? "" : " ", note.c_str(),
               why.empty() ? "" : " why=", why.c_str());
        fflush(stdout);
    }
};

// ------------------------------------------------------------------ cuMemAlloc
static void path_mem_alloc() {
    if (!selected("cuMemAlloc")) return;
    Path p("cuMemAlloc");
    const size_t chunk = 64 * kMiB;
    std::vector<CUdeviceptr> v;
    while (p.obtained + chunk <= g_cap) {
        CUdeviceptr d = 0;
        CUresult r = cuMemAlloc(&d, chunk);
        if (r != CUDA_SUCCESS) { p.fail_with(r, ""); break; }
        v.push_back(d);
        p.obtained += chunk;
        cuMemsetD8Async(d, 1, chunk, g_stream);
    }
    cuStreamSynchronize(g_stream);
    p.free_at_fail = free_now();
    for (CUdeviceptr d : v) cuMemFree(d);
    cuCtxSynchronize();
    p.free_after = free_now();
    p.report();
}

// ------------------------------------------------------------------ cuMemAllocPitch
static void path_mem_alloc_pitch() {
    if (!selected("cuMemAllocPitch")) return;
    Path p("cuMemAllocPitch");
    const size_t width = 8191, height = 8192;
    std::vector<CUdeviceptr> v;
    size_t pitch = 0;
    while (p.obtained + 64 * kMiB <= g_cap) {
        CUdeviceptr d = 0;
        size_t pt = 0;
        CUresult r = cuMemAllocPitch(&d, &pt, width, height, 4);
        if (r != CUDA_SUCCESS) { p.fail_with(r, ""); break; }
        v.push_back(d);
        pitch = pt;
        p.obtained += pt * height;  // the real size, pitch > width
        cuMemsetD8Async(d, 1, pt * height, g_stream);
    }
    cuStreamSynchronize(g_stream);
    p.free_at_fail = free_now();
    for (CUdeviceptr d : v) cuMemFree(d);
    cuCtxSynchronize();
    p.free_after = free_now();
    p.note += "pitch=" + std::to_string(pitch) + " width=8191";
    p.report(pitch == 0 || pitch > width);
}

// ------------------------------------------------------------------ cuMemAllocManaged
static void path_mem_alloc_managed() {
    if (!selected("cuMemAllocManaged")) return;
    Path p("cuMemAllocManaged");
    p.min_obtained = 0;  // policy: charged in full at allocation; just report how far it goes
    const size_t chunk = 64 * kMiB;
    std::vector<CUdeviceptr> v;
    while (p.obtained + chunk <= g_cap) {
        CUdeviceptr d = 0;
        CUresult r = cuMemAllocManaged(&d, chunk, CU_MEM_ATTACH_GLOBAL);
        if (r != CUDA_SUCCESS) { p.fail_with(r, "alloc"); break; }
        v.push_back(d);
        p.obtained += chunk;
        r = cuMemsetD8(d, 1, chunk);  // touch: pages migrate to the GPU
        if (r != CUDA_SUCCESS) { p.fail_with(r, "memset"); break; }
    }
    cuCtxSynchronize();
    p.free_at_fail = free_now();
    for (CUdeviceptr d : v) cuMemFree(d);
    cuCtxSynchronize();
    p.free_after = free_now();
    p.report();
}

// ------------------------------------------------------------------ cuMemAllocAsync (default pool)
static void path_mem_alloc_async() {
    if (!selected("cuMemAllocAsync")) return;
    Path p("cuMemAllocAsync");
    const size_t chunk = 64 * kMiB;
    std::vector<CUdeviceptr> v;
    while (p.obtained + chunk <= g_cap) {
        CUdeviceptr d = 0;
        CUresult r = cuMemAllocAsync(&d, chunk, g_stream);
        if (r != CUDA_SUCCESS) { p.fail_with(r, "alloc"); break; }
        v.push_back(d);
        p.obtained += chunk;
        cuMemsetD8Async(d, 1, chunk, g_stream);
        r = cuStreamSynchronize(g_stream);
        if (r != CUDA_SUCCESS) { p.fail_with(r, "sync"); break; }
    }
    cuStreamSynchronize(g_stream);
    p.free_at_fail = free_now();
    for (CUdeviceptr d : v) cuMemFreeAsync(d, g_stream);
    cuStreamSynchronize(g_stream);
    size_t after_sync = free_now();
    CUmemoryPool pool = nullptr;
    if (cuDeviceGetDefaultMemPool(&pool, g_dev) == CUDA_SUCCESS) cuMemPoolTrimTo(pool, 0);
    cuCtxSynchronize();
    p.free_after = free_now();
    p.note += "free_after_sync_mib=" + std::to_string(after_sync / kMiB);
    p.report();
}

// ------------------------------------------------------------------ user pool
static void path_mem_pool() {
    if (!selected("cuMemAllocFromPoolAsync")) return;
    Path p("cuMemAllocFromPoolAsync");
    CUmemPoolProps props;
    memset(&props, 0, sizeof(props));
    props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    props.handleTypes = CU_MEM_HANDLE_TYPE_NONE;
    props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    props.location.id = g_dev;
    CUmemoryPool pool = nullptr;
    CUresult r = cuMemPoolCreate(&pool, &props);
    if (r != CUDA_SUCCESS) {
        p.fail_with(r, "cuMemPoolCreate");
        p.free_after = free_now();
        p.report(false);
        return;
    }
    const size_t chunk = 64 * kMiB;
    std::vector<CUdeviceptr> v;
    while (p.obtained + chunk <= g_cap) {
        CUdeviceptr d = 0;
        r = cuMemAllocFromPoolAsync(&d, chunk, pool, g_stream);
        if (r != CUDA_SUCCESS) { p.fail_with(r, "alloc"); break; }
        v.push_back(d);
        p.obtained += chunk;
        cuMemsetD8Async(d, 1, chunk, g_stream);
        r = cuStreamSynchronize(g_stream);
        if (r != CUDA_SUCCESS) { p.fail_with(r, "sync"); break; }
    }
    cuStreamSynchronize(g_stream);
    p.free_at_fail = free_now();
    for (CUdeviceptr d : v) cuMemFreeAsync(d, g_stream);
    cuStreamSynchronize(g_stream);
    size_t before_trim = free_now();
    r = cuMemPoolTrimTo(pool, 0);
    cuCtxSynchronize();
    p.free_after = free_now();
    cuMemPoolDestroy(pool);
    cuCtxSynchronize();
    size_t after_destroy = free_now();
    p.note += "free_before_trim_mib=" + std::to_string(before_trim / kMiB) +
              " trim=" + errname(r) + " free_after_destroy_mib=" + std::to_string(after_destroy / kMiB);
    p.report(r == CUDA_SUCCESS);
}

// ------------------------------------------------------------------ VMM
static void path_vmm() {
    if (!selected("cuMemCreate")) return;
    Path p("cuMemCreate");
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof(prop));
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = g_dev;
    size_t gran = 0;
    CUresult r = cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
    if (r != CUDA_SUCCESS || gran == 0) {
        p.fail_with(r, "granularity");
        p.free_after = free_now();
        p.report(false);
        return;
    }
    const size_t chunk = round_up(64 * kMiB, gran);
    const size_t va_size = round_up(g_cap, chunk) + chunk;
    CUdeviceptr base = 0;
    r = cuMemAddressReserve(&base, va_size, 0, 0, 0);
    if (r != CUDA_SUCCESS) {
        p.fail_with(r, "cuMemAddressReserve");
        p.free_after = free_now();
        p.report(false);
        return;
    }
    CUmemAccessDesc acc;
    memset(&acc, 0, sizeof(acc));
    acc.location = prop.location;
    acc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    std::vector<CUmemGenericAllocationHandle> handles;
    size_t mapped = 0;
    while (p.obtained + chunk <= g_cap) {
        CUmemGenericAllocationHandle h = 0;
        r = cuMemCreate(&h, chunk, &prop, 0);
        if (r != CUDA_SUCCESS) { p.fail_with(r, "cuMemCreate"); break; }
        handles.push_back(h);
        p.obtained += chunk;
        CUdeviceptr at = base + mapped;
        r = cuMemMap(at, chunk, 0, h, 0);
        if (r != CUDA_SUCCESS) { p.fail_with(r, "cuMemMap"); break; }
        mapped += chunk;
        r = cuMemSetAccess(at, chunk, &acc, 1);
        if (r != CUDA_SUCCESS) { p.fail_with(r, "cuMemSetAccess"); break; }
        r = cuMemsetD8(at, 1, chunk);
        if (r != CUDA_SUCCESS) { p.fail_with(r, "memset"); break; }
    }
    cuCtxSynchronize();
    p.free_at_fail = free_now();
    if (mapped) cuMemUnmap(base, mapped);
    for (CUmemGenericAllocationHandle h : handles) cuMemRelease(h);
    cuMemAddressFree(base, va_size);
    cuCtxSynchronize();
    p.free_after = free_now();
    p.note += "granularity=" + std::to_string(gran) + " chunk_mib=" + std::to_string(chunk / kMiB);
    p.report();
}

// ------------------------------------------------------------------ arrays
static void path_array(int kind) {  // 0 cuArrayCreate, 1 cuArray3DCreate, 2 cuMipmappedArrayCreate
    const char *names[] = {"cuArrayCreate", "cuArray3DCreate", "cuMipmappedArrayCreate"};
    if (!selected(names[kind])) return;
    Path p(names[kind]);
    const size_t W = 4096, H = 4096, texel = 16;  // float4
    const unsigned levels = 13;                   // 4096 .. 1
    size_t unit = W * H * texel;                  // 256 MiB
    if (kind == 2) {
        unit = 0;
        for (unsigned l = 0; l < levels; ++l) unit += (W >> l) * (H >> l) * texel;
    }
    std::vector<CUarray> arrays;
    std::vector<CUmipmappedArray> mips;
    while (p.obtained + unit <= g_cap) {
        CUresult r;
        if (kind == 0) {
            CUDA_ARRAY_DESCRIPTOR d;
            memset(&d, 0, sizeof(d));
            d.Width = W; d.Height = H; d.Format = CU_AD_FORMAT_FLOAT; d.NumChannels = 4;
            CUarray a = nullptr;
            r = cuArrayCreate(&a, &d);
            if (r == CUDA_SUCCESS) arrays.push_back(a);
        } else {
            CUDA_ARRAY3D_DESCRIPTOR d;
            memset(&d, 0, sizeof(d));
            d.Width = W; d.Height = H; d.Depth = 0; d.Format = CU_AD_FORMAT_FLOAT; d.NumChannels = 4;
            if (kind == 1) {
                CUarray a = nullptr;
                r = cuArray3DCreate(&a, &d);
                if (r == CUDA_SUCCESS) arrays.push_back(a);
            } else {
                CUmipmappedArray m = nullptr;
                r = cuMipmappedArrayCreate(&m, &d, levels);
                if (r == CUDA_SUCCESS) mips.push_back(m);
            }
        }
        if (r != CUDA_SUCCESS) { p.fail_with(r, ""); break; }
        p.obtained += unit;
    }
    cuCtxSynchronize();
    p.free_at_fail = free_now();
    for (CUarray a : arrays) cuArrayDestroy(a);
    for (CUmipmappedArray m : mips) cuMipmappedArrayDestroy(m);
    cuCtxSynchronize();
    p.free_after = free_now();
    p.note += "unit_mib=" + std::to_string(unit / kMiB);
    p.report();
}

// ------------------------------------------------------------------ graph with memory nodes
// Builds alloc(bytes) -> memset -> free. Returns the first failing call's code
// (CUDA_SUCCESS if the 3 launches worked) and where it failed.
static CUresult run_mem_graph(size_t bytes, int launches, std::string *where, std::string *note) {
    CUgraph g = nullptr;
    CUgraphExec ge = nullptr;
    CUresult r = cuGraphCreate(&g, 0);
    if (r != CUDA_SUCCESS) { *where = "cuGraphCreate"; return r; }
    CUDA_MEM_ALLOC_NODE_PARAMS ap;
    memset(&ap, 0, sizeof(ap));
    ap.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    ap.poolProps.handleTypes = CU_MEM_HANDLE_TYPE_NONE;
    ap.poolProps.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    ap.poolProps.location.id = g_dev;
    ap.bytesize = bytes;
    CUgraphNode an = nullptr, mn = nullptr, fn = nullptr;
    CUresult out = CUDA_SUCCESS;
    do {
        r = cuGraphAddMemAllocNode(&an, g, nullptr, 0, &ap);
        if (r != CUDA_SUCCESS) { *where = "cuGraphAddMemAllocNode"; out = r; break; }
        CUDA_MEMSET_NODE_PARAMS ms;
        memset(&ms, 0, sizeof(ms));
        ms.dst = ap.dptr;
        ms.value = 0x01010101u;
        ms.elementSize = 4;
        ms.width = bytes / 4;
        ms.height = 1;
        ms.pitch = 0;
        CUgraphNode last = an;
        r = cuGraphAddMemsetNode(&mn, g, &an, 1, &ms, g_ctx);
        if (r == CUDA_SUCCESS) last = mn;
        else *note += std::string("memset_node=") + errname(r) + " ";
        r = cuGraphAddMemFreeNode(&fn, g, &last, 1, ap.dptr);
        if (r != CUDA_SUCCESS) { *where = "cuGraphAddMemFreeNode"; out = r; break; }
        r = cuGraphInstantiate(&ge, g, 0);
        if (r != CUDA_SUCCESS) { *where = "cuGraphInstantiate"; out = r; ge = nullptr; break; }
        for (int i = 0; i < launches; ++i) {
            r = cuGraphLaunch(ge, g_stream);
            if (r != CUDA_SUCCESS) { *where = "cuGraphLaunch#" + std::to_string(i); out = r; break; }
            r = cuStreamSynchronize(g_stream);
            if (r != CUDA_SUCCESS) { *where = "sync#" + std::to_string(i); out = r; break; }
        }
    } while (false);
    cuStreamSynchronize(g_stream);
    cuuint64_t reserved = 0;
    if (cuDeviceGetGraphMemAttribute(g_dev, CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT, &reserved) == CUDA_SUCCESS)
        *note += "graph_reserved_mib=" + std::to_string((size_t)(reserved / kMiB)) + " ";
    *note += "free_before_trim_mib=" + std::to_string(free_now() / kMiB) + " ";
    if (ge) cuGraphExecDestroy(ge);
    cuGraphDestroy(g);
    cuCtxSynchronize();
    CUresult tr = cuDeviceGraphMemTrim(g_dev);
    if (tr != CUDA_SUCCESS) *note += std::string("trim=") + errname(tr) + " ";
    cuCtxSynchronize();
    return out;
}

static void path_graph() {
    if (!selected("cuGraphAddMemAllocNode")) return;
    Path p("cuGraphAddMemAllocNode");
    p.expect_oom = false;
    std::string where, note;
    CUresult r = run_mem_graph(g_graph_bytes, 3, &where, &note);
    p.free_at_fail = free_now();
    p.free_after = p.free_at_fail;
    if (r != CUDA_SUCCESS) {
        p.fail_with(r, where.c_str());
    } else {
        p.obtained = g_graph_bytes;
    }
    p.note += "launches=3 " + note;
    p.report(r == CUDA_SUCCESS);
}

// A graph whose alloc node is larger than the whole limit must fail with OOM
// somewhere (add node, instantiate or launch) and leave nothing behind.
static void path_graph_oversize() {
    if (!selected("graph_oversize")) return;
    Path p("graph_oversize");
    p.min_obtained = 0;
    size_t bytes = round_up(g_total + 1 * kGiB, 2 * kMiB);
    std::string where, note;
    CUresult r = run_mem_graph(bytes, 1, &where, &note);
    p.free_at_fail = free_now();
    p.free_after = p.free_at_fail;
    if (r != CUDA_SUCCESS) p.fail_with(r, where.c_str());
    p.note += "request_mib=" + std::to_string(bytes / kMiB) + " " + note;
    p.report();
}

// ------------------------------------------------------------------ entry points
static std::string lib_of(const void *fn) {
    if (fn == nullptr) return "null";
    Dl_info info;
    memset(&info, 0, sizeof(info));
    if (dladdr(fn, &info) == 0 || info.dli_fname == nullptr) return "unknown";
    const char *s = strrchr(info.dli_fname, '/');
    return s ? s + 1 : info.dli_fname;
}

static void entry_points() {
    if (!selected("entrypoints")) return;
    const char *syms[] = {"cuMemAlloc", "cuMemFree", "cuMemAllocAsync", "cuMemCreate",
                          "cuMemGetInfo", "cuArrayCreate", "cuGraphLaunch", "cuDeviceTotalMem"};
    struct { cuuint64_t flag; const char *name; } flags[] = {
        {CU_GET_PROC_ADDRESS_DEFAULT, "default"},
        {CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, "ptds"},
    };
    int n = 0, hooked = 0;
    std::string missing;
    for (const char *s : syms) {
        for (auto &f : flags) {
            void *fn = nullptr;
            CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
            CUresult r = cuGetProcAddress(s, &fn, 13000, f.flag, &st);
            std::string lib = lib_of(fn);
            bool h = lib.find("gpuslice") != std::string::npos;
            ++n;
            if (h) ++hooked; else missing += std::string(s) + "/" + f.name + ",";
            printf("entry api=cuGetProcAddress sym=%s flags=%s rc=%s status=%d lib=%s hooked=%d\n",
                   s, f.name, errname(r), (int)st, lib.c_str(), h ? 1 : 0);
        }
    }
    {
        void *fn = nullptr;
        cudaDriverEntryPointQueryResult qr = cudaDriverEntryPointSymbolNotFound;
        cudaError_t e = cudaGetDriverEntryPointByVersion("cuMemAlloc", &fn, 13000, cudaEnableDefault, &qr);
        std::string lib = lib_of(fn);
        bool h = lib.find("gpuslice") != std::string::npos;
        ++n;
        if (h) ++hooked; else missing += "cudaGetDriverEntryPointByVersion(cuMemAlloc),";
        printf("entry api=cudaGetDriverEntryPointByVersion sym=cuMemAlloc flags=default rc=%s status=%d lib=%s hooked=%d\n",
               cudaGetErrorName(e), (int)qr, lib.c_str(), h ? 1 : 0);
    }
    // Where the dynamic linker resolved the symbols this binary calls directly.
    const char *direct[] = {"cuGetProcAddress_v2", "cuMemAlloc_v2", "cuMemGetInfo_v2", "cuInit"};
    for (const char *s : direct) {
        void *fn = dlsym(RTLD_DEFAULT, s);
        printf("entry api=dlsym(RTLD_DEFAULT) sym=%s lib=%s\n", s, lib_of(fn).c_str());
    }
    bool ok = !g_expect_hooked || hooked == n;
    if (!ok) g_all_ok = false;
    printf("path=entrypoints obtained_mib=0 oom_code=none free_after_mib=%zu ok=%d hooked=%d/%d expect_hooked=%d%s%s\n",
           free_now() / kMiB, ok ? 1 : 0, hooked, n, g_expect_hooked ? 1 : 0,
           missing.empty() ? "" : " not_hooked=", missing.c_str());
    fflush(stdout);
}

static void usage() {
    fprintf(stderr,
            "usage: driver_paths [--expect-hooked] [--expect-total-mib N] [--cap-mib N] [--graph-mib N]\n"
            "                    [--only name,name,...]\n"
            "paths: entrypoints cuMemAlloc cuMemAllocPitch cuMemAllocManaged cuMemAllocAsync\n"
            "       cuMemAllocFromPoolAsync cuMemCreate cuArrayCreate cuArray3DCreate\n"
            "       cuMipmappedArrayCreate cuGraphAddMemAllocNode graph_oversize\n");
}

int main(int argc, char **argv) {
    long cap_mib = -1;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto next = [&](void) -> const char * {
            if (i + 1 >= argc) { usage(); exit(2); }
            return argv[++i];
        };
        if (a == "--expect-hooked") g_expect_hooked = true;
        else if (a == "--expect-total-mib") g_expect_total_mib = atol(next());
        else if (a == "--cap-mib") cap_mib = atol(next());
        else if (a == "--graph-mib") g_graph_bytes = (size_t)atol(next()) * kMiB;
        else if (a == "--only") g_only = next();
        else { usage(); return 2; }
    }
    setvbuf(stdout, nullptr, _IOLBF, 0);

    CUresult r = cuInit(0);
    if (r != CUDA_SUCCESS) {
        printf("path=init obtained_mib=0 oom_code=%s free_after_mib=0 ok=0 why=cuInit_failed\nSOME_FAILED\n", errname(r));
        return 2;
    }
    int drv = 0;
    cuDriverGetVersion(&drv);
    if ((r = cuDeviceGet(&g_dev, 0)) != CUDA_SUCCESS ||
        (r = cuDevicePrimaryCtxRetain(&g_ctx, g_dev)) != CUDA_SUCCESS ||
        (r = cuCtxSetCurrent(g_ctx)) != CUDA_SUCCESS ||
        (r = cuStreamCreate(&g_stream, CU_STREAM_NON_BLOCKING)) != CUDA_SUCCESS) {
        printf("path=init obtained_mib=0 oom_code=%s free_after_mib=0 ok=0 why=context_setup_failed\nSOME_FAILED\n", errname(r));
        return 2;
    }
    char name[256] = {0};
    cuDeviceGetName(name, sizeof(name) - 1, g_dev);
    size_t f0 = 0, dev_total = 0;
    cuMemGetInfo(&f0, &g_total);
    cuDeviceTotalMem(&dev_total, g_dev);
    if (cap_mib > 0) g_cap = (size_t)cap_mib * kMiB;
    else if (g_total <= 16 * kGiB) g_cap = g_total + 1 * kGiB;  // a slice: the limit must stop us first
    else g_cap = 8 * kGiB;                                       // no slice: don't fill a whole GPU
    bool total_ok = g_expect_total_mib < 0 || g_total == (size_t)g_expect_total_mib * kMiB;
    if (!total_ok) g_all_ok = false;
    printf("path=init obtained_mib=0 oom_code=none free_after_mib=%zu ok=%d total_mib=%zu device_total_mib=%zu "
           "cap_mib=%zu driver=%d device=\"%s\" ld_preload=%s\n",
           f0 / kMiB, total_ok ? 1 : 0, g_total / kMiB, dev_total / kMiB, g_cap / kMiB, drv, name,
           getenv("LD_PRELOAD") ? getenv("LD_PRELOAD") : "-");

    entry_points();
    path_mem_alloc();
    path_mem_alloc_pitch();
    path_mem_alloc_managed();
    path_mem_alloc_async();
    path_mem_pool();
    path_vmm();
    path_array(0);
    path_array(1);
    path_array(2);
    path_graph();
    path_graph_oversize();

    cuStreamDestroy(g_stream);
    cuDevicePrimaryCtxRelease(g_dev);
    printf("%s\n", g_all_ok ? "ALL_OK" : "SOME_FAILED");
    return g_all_ok ? 0 : 1;
}
