//! Memory slices end to end: `cuda-probe` processes load the fake driver like the CUDA
//! runtime does, with `libgpuslice.so` preloaded, and every allocation path is driven to
//! the edge of the limit. The fake GPU records the highest memory ever in use, which is
//! what the host's nvidia-smi would have shown.

use system_tests::{Bench, GIB, MIB, fake_uuid, run};

const CONTEXT: u64 = 300 * MIB;
const CUDA_ERROR_OUT_OF_MEMORY: u64 = 2;
const CUDA_ERROR_NOT_PERMITTED: u64 = 800;

fn env(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[test]
fn hooks_are_handed_out_through_get_proc_address_and_dlsym() {
    let bench = Bench::new();
    let slice = bench.slice_env("resolve", "1GiB");
    let r = run(&mut bench.probe(
        &env(&slice),
        &[
            "resolve:cuMemAlloc",
            "resolve:cuMemGetInfo",
            "resolve:cuMemCreate",
            "resolve:cuGetProcAddress",
            "resolve:cuLaunchKernel",
        ],
    ));
    assert!(
        r.lines[0].contains("libgpuslice.so symbol=cuMemAlloc_v2"),
        "{}",
        r.text()
    );
    assert!(
        r.lines[1].contains("libgpuslice.so symbol=cuMemGetInfo_v2"),
        "{}",
        r.text()
    );
    assert!(
        r.lines[2].contains("libgpuslice.so symbol=cuMemCreate"),
        "{}",
        r.text()
    );
    assert!(
        r.lines[3].contains("libgpuslice.so symbol=cuGetProcAddress_v2"),
        "{}",
        r.text()
    );
    // Functions we do not hook come straight from the driver.
    assert!(r.lines[4].contains("libcuda.so.1"), "{}", r.text());
}

#[test]
fn per_thread_stream_entry_points_stay_per_thread() {
    let bench = Bench::new();
    let slice = bench.slice_env("ptsz", "1GiB");
    let mut vars = env(&slice);
    vars.push(("PROBE_PER_THREAD", "1"));
    let r = run(&mut bench.probe(
        &vars,
        &[
            "resolve:cuMemAllocAsync",
            "resolve:cuMemFreeAsync",
            "resolve:cuGraphLaunch",
            "resolve:cuLaunchKernel",
        ],
    ));
    assert!(
        r.lines[0].contains("libgpuslice.so symbol=cuMemAllocAsync_ptsz"),
        "{}",
        r.text()
    );
    assert!(
        r.lines[1].contains("libgpuslice.so symbol=cuMemFreeAsync_ptsz"),
        "{}",
        r.text()
    );
    assert!(
        r.lines[2].contains("libgpuslice.so symbol=cuGraphLaunch_ptsz"),
        "{}",
        r.text()
    );
    assert!(
        r.lines[3].contains("libcuda.so.1 symbol=cuLaunchKernel_ptsz"),
        "{}",
        r.text()
    );
}

#[test]
fn a_process_outside_any_slice_gets_the_real_driver() {
    let bench = Bench::new();
    let r = run(&mut bench.probe(
        &[],
        &["resolve:cuMemAlloc", "init", "ctx", "alloc:1G", "meminfo"],
    ));
    assert!(r.lines[0].contains("libcuda.so.1"), "{}", r.text());
    assert_eq!(r.num("meminfo", "total"), 80 * GIB);
}

#[test]
fn plain_allocations_stop_at_the_limit_and_memory_queries_report_the_slice() {
    let bench = Bench::new();
    let slice = bench.slice_env("plain", "1GiB");
    let r = run(&mut bench.probe(
        &env(&slice),
        &[
            "init", "ctx", "meminfo", "totalmem", "fill:64M", "meminfo", "freeall", "meminfo",
        ],
    ));
    assert_eq!(r.rc("init"), 0);
    let info: Vec<_> = r
        .lines
        .iter()
        .filter(|l| l.starts_with("meminfo"))
        .cloned()
        .collect();
    let field = |line: &str, key: &str| -> u64 {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(field(&info[0], "total"), GIB);
    assert_eq!(
        field(&info[0], "free"),
        GIB - CONTEXT,
        "the context is charged to the slice"
    );
    assert_eq!(r.num("totalmem", "total"), GIB);
    assert_eq!(r.rc("fill:64M"), CUDA_ERROR_OUT_OF_MEMORY);
    let filled = r.num("fill:64M", "bytes");
    assert_eq!(
        filled,
        (GIB - CONTEXT) / (64 * MIB) * 64 * MIB,
        "nearly all of the slice is usable"
    );
    assert!(field(&info[1], "free") < 64 * MIB);
    assert_eq!(
        field(&info[2], "free"),
        GIB - CONTEXT,
        "frees give the charge back"
    );
    assert!(
        bench.peak(0) <= GIB,
        "peak {} exceeded the limit",
        bench.peak(0)
    );
    assert!(
        r.stderr.contains("slice") && r.stderr.contains("1GiB"),
        "one clear line names the slice and its limit: {}",
        r.stderr
    );
}

#[test]
fn direct_binding_without_getprocaddress_is_limited_too() {
    let bench = Bench::new();
    let slice = bench.slice_env("direct", "1GiB");
    let r = run(&mut bench.probe(
        &env(&slice),
        &["init", "ctx", "direct-alloc:600M", "direct-alloc:600M"],
    ));
    let lines: Vec<_> = r
        .lines
        .iter()
        .filter(|l| l.starts_with("direct-alloc"))
        .collect();
    assert!(lines[0].ends_with("rc=0"), "{}", r.text());
    assert!(
        lines[1].ends_with(&format!("rc={CUDA_ERROR_OUT_OF_MEMORY}")),
        "{}",
        r.text()
    );
}

#[test]
fn pitch_allocations_are_charged_by_the_real_pitch() {
    let bench = Bench::new();
    let slice = bench.slice_env("pitch", "1GiB");
    // 8191 bytes wide: the driver pads each row to 8192.
    let r = run(&mut bench.probe(
        &env(&slice),
        &[
            "init",
            "ctx",
            "pitch:8191x16384",
            "meminfo",
            "pitch:8191x81920",
            "pitch:8191x65536",
        ],
    ));
    assert_eq!(r.num("pitch:8191x16384", "pitch"), 8192);
    assert_eq!(r.num("meminfo", "free"), GIB - CONTEXT - 128 * MIB);
    // By the requested width 640 MiB minus 80 KiB would fit in the 596 MiB left... it
    // does not either way; by the real pitch it is 640 MiB.
    assert_eq!(
        r.rc("pitch:8191x81920"),
        CUDA_ERROR_OUT_OF_MEMORY,
        "640 MiB + 128 MiB + context > 1 GiB"
    );
    assert_eq!(
        r.rc("pitch:8191x65536"),
        0,
        "512 MiB + 128 MiB + context fits"
    );
    assert!(bench.peak(0) <= GIB);
}

#[test]
fn managed_memory_is_charged_in_full() {
    let bench = Bench::new();
    let slice = bench.slice_env("managed", "1GiB");
    let r = run(&mut bench.probe(
        &env(&slice),
        &["init", "ctx", "managed:512M", "managed:512M", "meminfo"],
    ));
    let lines: Vec<_> = r
        .lines
        .iter()
        .filter(|l| l.starts_with("managed"))
        .collect();
    assert!(
        lines[0].ends_with("rc=0") && lines[1].ends_with("rc=2"),
        "{}",
        r.text()
    );
    assert_eq!(r.num("meminfo", "free"), GIB - CONTEXT - 512 * MIB);
}

#[test]
fn stream_ordered_pools_are_charged_by_what_they_reserve() {
    let bench = Bench::new();
    let slice = bench.slice_env("async", "1GiB");
    let r = run(&mut bench.probe(
        &env(&slice),
        &[
            "init",
            "ctx",
            "asyncfill:64M",
            "meminfo",
            "freeall",
            "trim",
            "sync",
            "meminfo",
        ],
    ));
    assert_eq!(r.rc("asyncfill:64M"), CUDA_ERROR_OUT_OF_MEMORY);
    assert!(
        r.num("asyncfill:64M", "bytes") >= GIB - CONTEXT - 128 * MIB,
        "{}",
        r.text()
    );
    assert!(bench.peak(0) <= GIB, "peak {}", bench.peak(0));
    let frees: Vec<u64> = r
        .lines
        .iter()
        .filter(|l| l.starts_with("meminfo"))
        .map(|l| {
            l.split(' ')
                .find_map(|kv| kv.strip_prefix("free="))
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(frees[0] < 64 * MIB);
    assert_eq!(
        frees[1],
        GIB - CONTEXT,
        "a trimmed pool gives its charge back"
    );
}

#[test]
fn user_pools_are_charged_and_pools_that_grow_in_big_chunks_never_pass_the_limit() {
    let mut bench = Bench::new();
    bench.set("FAKE_CUDA_POOL_CHUNK", "96MiB");
    let slice = bench.slice_env("pool", "1GiB");
    let mut steps = vec!["init", "ctx"];
    steps.extend(std::iter::repeat_n("pool:40M", 20));
    steps.push("meminfo");
    let r = run(&mut bench.probe(&env(&slice), &steps));
    let ok = r
        .lines
        .iter()
        .filter(|l| l.starts_with("pool:") && l.ends_with("rc=0"))
        .count();
    let refused = r
        .lines
        .iter()
        .filter(|l| l.starts_with("pool:") && l.ends_with("rc=2"))
        .count();
    assert!(ok >= 15 && refused >= 1, "{}", r.text());
    assert!(bench.peak(0) <= GIB, "peak {} > limit", bench.peak(0));
}

#[test]
fn vmm_allocations_are_charged_when_created() {
    let bench = Bench::new();
    let slice = bench.slice_env("vmm", "1GiB");
    let r = run(&mut bench.probe(
        &env(&slice),
        &[
            "init",
            "ctx",
            "vmmfill:64M",
            "meminfo",
            "freeall",
            "meminfo",
        ],
    ));
    assert_eq!(r.rc("vmmfill:64M"), CUDA_ERROR_OUT_OF_MEMORY);
    assert_eq!(r.num("vmmfill:64M", "count"), (GIB - CONTEXT) / (64 * MIB));
    assert!(bench.peak(0) <= GIB);
    let last_free: u64 = r
        .lines
        .last()
        .unwrap()
        .split(' ')
        .find_map(|kv| kv.strip_prefix("free="))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(last_free, GIB - CONTEXT);
}

#[test]
fn arrays_and_mipmaps_are_charged_by_their_memory_requirements() {
    let bench = Bench::new();
    let slice = bench.slice_env("arrays", "1GiB");
    // 4096 x 4096 float4 = 256 MiB each.
    let r = run(&mut bench.probe(
        &env(&slice),
        &[
            "init",
            "ctx",
            "array:4096x4096",
            "array3d:2048x2048x4",
            "meminfo",
            "mipmap:4096x4096:3",
            "freeall",
            "meminfo",
        ],
    ));
    assert_eq!(r.rc("array:4096x4096"), 0);
    assert_eq!(r.rc("array3d:2048x2048x4"), 0);
    assert_eq!(r.num("meminfo", "free"), GIB - CONTEXT - 512 * MIB);
    // 256 + 64 + 16 MiB does not fit in the 212 MiB left.
    assert_eq!(
        r.rc("mipmap:4096x4096:3"),
        CUDA_ERROR_OUT_OF_MEMORY,
        "{}",
        r.text()
    );
    assert!(bench.peak(0) <= GIB);
}

#[test]
fn graph_memory_nodes_are_charged_at_launch() {
    let bench = Bench::new();
    let slice = bench.slice_env("graph", "1GiB");
    let r = run(&mut bench.probe(
        &env(&slice),
        &[
            "init",
            "ctx",
            "alloc:256M",
            "graph:256M",
            "meminfo",
            "graph:600M",
            "graphtrim",
            "meminfo",
        ],
    ));
    assert_eq!(r.rc("graph:256M"), 0, "{}", r.text());
    let frees: Vec<u64> = r
        .lines
        .iter()
        .filter(|l| l.starts_with("meminfo"))
        .map(|l| {
            l.split(' ')
                .find_map(|kv| kv.strip_prefix("free="))
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(
        frees[0],
        GIB - CONTEXT - 512 * MIB,
        "the graph pool keeps its memory until trimmed"
    );
    assert_eq!(r.rc("graph:600M"), CUDA_ERROR_OUT_OF_MEMORY, "{}", r.text());
    assert_eq!(
        frees[1],
        GIB - CONTEXT - 256 * MIB,
        "trimming gives the graph pool's charge back"
    );
    assert!(bench.peak(0) <= GIB);
}

#[test]
fn a_context_that_does_not_fit_is_refused() {
    let bench = Bench::new();
    let slice = bench.slice_env("tiny", "256MiB");
    let r = run(&mut bench.probe(&env(&slice), &["init", "ctx"]));
    assert_eq!(r.rc("ctx"), CUDA_ERROR_OUT_OF_MEMORY, "{}", r.text());
    assert!(bench.peak(0) <= 300 * MIB);
}

/// Allocations the ledger of `name` counts as refused, all its GPUs together, read
/// through the host's slice listing (what `gpuslice status --json` and `/metrics` show).
fn refused_in_ledger(bench: &Bench, name: &str) -> u64 {
    let status = gpuslice_host::listing::slice_status(&bench.ledger(name), false);
    assert!(status.error.is_none(), "{:?}", status.error);
    status.devices.iter().map(|d| d.refused_allocations).sum()
}

/// The probe's `step` lines (`step` or `step:ARG`) that ended in `rc`.
fn steps_with_rc(r: &system_tests::Report, step: &str, rc: u64) -> usize {
    r.lines
        .iter()
        .filter(|l| {
            let name = l.split([' ', ':']).next().unwrap_or_default();
            name == step && l.split(' ').any(|kv| kv == format!("rc={rc}"))
        })
        .count()
}

#[test]
fn every_refused_allocation_is_counted_once_in_the_ledger() {
    let mut bench = Bench::new();
    let slice = bench.slice_env("counted", "1GiB");
    // cuMemAlloc: refused by the charge itself (retried once after making room).
    let r = run(&mut bench.probe(
        &env(&slice),
        &[
            "init",
            "ctx",
            "alloc:600M",
            "alloc:200M",
            "alloc:100M",
            "alloc:100M",
        ],
    ));
    assert_eq!(steps_with_rc(&r, "alloc", 0), 2, "{}", r.text());
    assert_eq!(
        steps_with_rc(&r, "alloc", CUDA_ERROR_OUT_OF_MEMORY),
        2,
        "{}",
        r.text()
    );
    assert_eq!(refused_in_ledger(&bench, "counted"), 2, "{}", r.text());
    assert!(bench.peak(0) <= GIB, "peak {}", bench.peak(0));

    // An array the driver makes larger than its estimate (64 MiB pages): the estimate
    // fits, the growth to the driver's size does not, and the array is taken back.
    bench.set("FAKE_CUDA_GRANULARITY", "64MiB");
    let r = run(&mut bench.probe(
        &env(&slice),
        &["init", "ctx", "alloc:704M", "array:4096x1", "meminfo"],
    ));
    assert_eq!(r.rc("alloc:704M"), 0, "{}", r.text());
    assert_eq!(
        r.rc("array:4096x1"),
        CUDA_ERROR_OUT_OF_MEMORY,
        "{}",
        r.text()
    );
    assert_eq!(refused_in_ledger(&bench, "counted"), 3, "{}", r.text());

    // A stream-ordered pool that grows in 96 MiB steps: the first allocation's 40 MiB
    // fits before the call, the pool's growth after it does not (taken back); the
    // second is refused before the call, by the growth step learnt.
    bench.set("FAKE_CUDA_GRANULARITY", "2MiB");
    bench.set("FAKE_CUDA_POOL_CHUNK", "96MiB");
    let r = run(&mut bench.probe(
        &env(&slice),
        &["init", "ctx", "alloc:660M", "async:40M", "async:40M"],
    ));
    assert_eq!(r.rc("alloc:660M"), 0, "{}", r.text());
    assert_eq!(
        steps_with_rc(&r, "async", CUDA_ERROR_OUT_OF_MEMORY),
        2,
        "{}",
        r.text()
    );
    assert_eq!(refused_in_ledger(&bench, "counted"), 5, "{}", r.text());

    // A context that does not fit: tried three times (making room, measuring), one
    // refusal.
    let tiny = bench.slice_env("tiny-counted", "256MiB");
    let r = run(&mut bench.probe(&env(&tiny), &["init", "ctx"]));
    assert_eq!(r.rc("ctx"), CUDA_ERROR_OUT_OF_MEMORY, "{}", r.text());
    assert_eq!(refused_in_ledger(&bench, "tiny-counted"), 1, "{}", r.text());
}

/// Every way a program creates a context: retaining the primary context, and each
/// `cuCtxCreate` symbol (the unversioned one is the first ABI's, still exported).
const CONTEXT_STEPS: [&str; 5] = [
    "ctx",
    "ctxcreate:cuCtxCreate",
    "ctxcreate:cuCtxCreate_v2",
    "ctxcreate:cuCtxCreate_v3",
    "ctxcreate:cuCtxCreate_v4",
];

/// Starts a process of `slice` that creates a context, allocates `bytes`, and stays until
/// `done` exists; returns once it is ready.
fn holder(
    bench: &Bench,
    slice: &[(String, String)],
    bytes: &str,
    done: &std::path::Path,
) -> std::process::Child {
    let ready = bench.dir.path().join("holder.ready");
    let child = bench
        .probe(
            &env(slice),
            &[
                "init",
                "ctx",
                &format!("alloc:{bytes}"),
                &format!("ready:{}", ready.display()),
                &format!("wait:{}", done.display()),
            ],
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    system_tests::wait_for(&ready, "the holding process");
    child
}

#[test]
fn every_way_of_creating_a_context_is_charged_before_the_context_exists() {
    for step in CONTEXT_STEPS {
        // Charged, and measured (the slice has not measured a context yet).
        let bench = Bench::new();
        let slice = bench.slice_env("ctx", "2GiB");
        let r = run(&mut bench.probe(&env(&slice), &["init", step, "meminfo"]));
        assert_eq!(r.rc(step), 0, "{}", r.text());
        assert_eq!(
            r.num("meminfo", "total") - r.num("meminfo", "free"),
            CONTEXT,
            "{step}: the context is charged at its measured size\n{}",
            r.text()
        );

        // Refused without being created when it does not fit: the GPU never holds more
        // than the slice.
        let done = bench.dir.path().join("done");
        let slice = bench.slice_env("full", "1GiB");
        let mut hold = holder(&bench, &slice, "700M", &done);
        let r = run(&mut bench.probe(&env(&slice), &["init", step]));
        std::fs::write(&done, b"").unwrap();
        hold.wait().unwrap();
        assert_eq!(r.rc(step), CUDA_ERROR_OUT_OF_MEMORY, "{step}\n{}", r.text());
        assert!(
            bench.peak(0) <= GIB,
            "{step}: the GPU held {} MiB for a 1 GiB slice",
            bench.peak(0) / MIB
        );
    }
}

#[test]
fn contexts_created_at_once_on_a_nearly_full_slice_never_pass_the_limit() {
    // A 2 GiB slice with 1324 MiB in use: room for two 300 MiB contexts. Eight processes
    // then create one each at the same moment, by every creation path.
    let bench = Bench::new();
    let slice = bench.slice_env("crowded", "2GiB");
    let done = bench.dir.path().join("done");
    let go = bench.dir.path().join("go");
    let mut hold = holder(&bench, &slice, "1024M", &done);
    let ready = |i: usize| bench.dir.path().join(format!("ready{i}"));
    let created = |i: usize| bench.dir.path().join(format!("created{i}"));
    let children: Vec<_> = (0..8)
        .map(|i| {
            bench
                .probe(
                    &env(&slice),
                    &[
                        "init",
                        &format!("ready:{}", ready(i).display()),
                        &format!("wait:{}", go.display()),
                        CONTEXT_STEPS[i % CONTEXT_STEPS.len()],
                        &format!("ready:{}", created(i).display()),
                        &format!("wait:{}", done.display()),
                    ],
                )
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for i in 0..8 {
        system_tests::wait_for(&ready(i), "a process to start");
    }
    std::fs::write(&go, b"").unwrap();
    for i in 0..8 {
        system_tests::wait_for(&created(i), "a process to create its context");
    }
    let ledger = gpuslice_ledger::Ledger::open(&bench.ledger("crowded")).unwrap();
    let ledger_used = ledger.devices()[0].used;
    let in_use = fake_gpu::in_use(bench.state(), 0);
    std::fs::write(&done, b"").unwrap();
    hold.wait().unwrap();
    let mut made = 0;
    for (i, child) in children.into_iter().enumerate() {
        let r = system_tests::Report::from(&child.wait_with_output().unwrap());
        let step = CONTEXT_STEPS[i % CONTEXT_STEPS.len()];
        match r.rc(step) {
            0 => made += 1,
            CUDA_ERROR_OUT_OF_MEMORY => {}
            rc => panic!("{step} returned {rc}\n{}", r.text()),
        }
    }
    assert!(
        bench.peak(0) <= 2 * GIB,
        "the GPU held {} MiB for a 2 GiB slice",
        bench.peak(0) / MIB
    );
    assert!(ledger_used <= 2 * GIB, "ledger {ledger_used}");
    assert!(in_use <= 2 * GIB, "device {in_use}");
    assert!(
        (1..=2).contains(&made),
        "{made} contexts were created where two fit"
    );
}

#[test]
fn a_primary_context_is_charged_once_however_often_it_is_retained() {
    // Libraries retain the primary context again and again (the runtime, cuBLAS, ...):
    // one context, one charge, given back when the driver destroys it. NVML fails here,
    // so the default estimate (512 MiB) is never replaced by a measurement.
    let bench = Bench::new();
    let mut slice = bench.slice_env("retains", "2GiB");
    slice.push(("FAKE_NVML_FAIL".into(), "nvmlInit_v2@*=999".into()));
    let r = run(&mut bench.probe(
        &env(&slice),
        &[
            "init",
            "ctx",
            "ctx",
            "ctx",
            "meminfo",
            "ctxrelease",
            "ctxrelease",
            "ctxrelease",
            "ctx",
            "meminfo",
            "ctxreset",
            "ctx",
            "meminfo",
        ],
    ));
    let used: Vec<u64> = r
        .lines
        .iter()
        .filter(|l| l.starts_with("meminfo"))
        .map(|line| {
            let field = |key: &str| -> u64 {
                line.split(' ')
                    .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            field("total") - field("free")
        })
        .collect();
    assert_eq!(used, vec![512 * MIB; 3], "{}", r.text());
}

#[test]
fn free_memory_never_exceeds_what_the_gpu_really_has() {
    let bench = Bench::new();
    // A process outside the slice holds most of the GPU.
    let mut hog = bench
        .bare_probe(&["init", "ctx", "alloc:79G"])
        .arg(format!("ready:{}", bench.dir.path().join("hog").display()))
        .arg(format!("wait:{}", bench.dir.path().join("done").display()))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while !bench.dir.path().join("hog").exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let slice = bench.slice_env("crowded", "4GiB");
    let r = run(&mut bench.probe(&env(&slice), &["init", "ctx", "meminfo"]));
    std::fs::write(bench.dir.path().join("done"), b"").unwrap();
    hog.wait().unwrap();
    assert_eq!(r.num("meminfo", "total"), 4 * GIB);
    assert!(
        r.num("meminfo", "free") <= 80 * GIB - 79 * GIB - 2 * CONTEXT,
        "{}",
        r.text()
    );
}

#[test]
fn compatible_variables_of_vgpu_controller_and_hami_core_set_limits() {
    let bench = Bench::new();
    let uuid = fake_uuid(0);
    let r = run(&mut bench.probe(
        &[("CUDA_MEM_LIMIT_0", "1000m"), ("GPU_DEVICES_UUID", &uuid)],
        &["init", "ctx", "totalmem", "meminfo"],
    ));
    assert_eq!(r.num("totalmem", "total"), 1000 * MIB);
    let r = run(&mut bench.probe(
        &[("CUDA_DEVICE_MEMORY_LIMIT", "2g")],
        &["init", "ctx", "totalmem"],
    ));
    assert_eq!(r.num("totalmem", "total"), 2 * GIB);
    let r = run(&mut bench.probe(
        &[("CUDA_DEVICE_MEMORY_LIMIT_0", "3g")],
        &["init", "ctx", "totalmem"],
    ));
    assert_eq!(r.num("totalmem", "total"), 3 * GIB);
}

#[test]
fn bad_limits_fail_closed_and_name_the_variable() {
    let bench = Bench::new();
    for (var, value) in [
        ("GPUSLICE_MEMORY", "4GB-oops"),
        ("CUDA_DEVICE_MEMORY_LIMIT", "lots"),
        ("CUDA_MEM_LIMIT_0", "1000x"),
    ] {
        let r = run(&mut bench.probe(&[(var, value)], &["init", "ctx", "alloc:1M", "meminfo"]));
        assert_eq!(
            r.rc("init"),
            CUDA_ERROR_NOT_PERMITTED,
            "{var}: {}",
            r.text()
        );
        assert_eq!(
            r.rc("alloc:1M"),
            CUDA_ERROR_NOT_PERMITTED,
            "{var}: {}",
            r.text()
        );
        assert!(
            r.stderr.contains(var),
            "stderr should name {var}: {}",
            r.stderr
        );
        assert_eq!(
            r.stderr.matches("gpuslice:").count(),
            1,
            "reported once: {}",
            r.stderr
        );
    }
}

#[test]
fn a_corrupt_or_foreign_ledger_fails_closed_and_names_the_file() {
    let bench = Bench::new();
    let path = bench.dir.path().join("garbage.ledger");
    std::fs::write(&path, b"this is not a ledger at all, just some bytes").unwrap();
    let p = path.display().to_string();
    let r = run(&mut bench.probe(
        &[("GPUSLICE_MEMORY", "1GiB"), ("GPUSLICE_LEDGER", &p)],
        &["init", "ctx", "alloc:1M"],
    ));
    assert_eq!(r.rc("init"), CUDA_ERROR_NOT_PERMITTED);
    assert_eq!(r.rc("alloc:1M"), CUDA_ERROR_NOT_PERMITTED);
    assert!(r.stderr.contains(&p), "{}", r.stderr);
}

#[test]
fn a_limit_that_disagrees_with_the_ledger_is_refused() {
    let bench = Bench::new();
    let first = bench.slice_env("agree", "1GiB");
    run(&mut bench.probe(&env(&first), &["init", "ctx"]));
    let mut second = bench.slice_env("agree", "2GiB");
    second.retain(|(k, _)| k != "GPUSLICE_MEMORY");
    second.push(("GPUSLICE_MEMORY".into(), "2GiB".into()));
    let r = run(&mut bench.probe(&env(&second), &["init", "ctx", "alloc:1M"]));
    assert_eq!(r.rc("ctx"), CUDA_ERROR_NOT_PERMITTED, "{}", r.text());
    assert!(r.stderr.contains("limit"), "{}", r.stderr);
}

#[test]
fn cuda_visible_devices_is_followed_through_uuids() {
    let mut bench = Bench::new();
    bench.set("FAKE_GPU_COUNT", "2");
    // Device index 1 as nvidia-smi numbers it, seen by the program as CUDA device 0.
    let r = run(&mut bench.probe(
        &[("GPUSLICE_MEMORY", "1=1GiB"), ("CUDA_VISIBLE_DEVICES", "1")],
        &["init", "ctx", "totalmem:0", "fill:256M"],
    ));
    assert_eq!(r.num("totalmem:0", "total"), GIB, "{}", r.text());
    assert!(
        bench.peak(1) <= GIB && bench.peak(0) == 0,
        "peaks {} {}",
        bench.peak(0),
        bench.peak(1)
    );
    // Device 0 is not limited.
    let uuid1 = fake_uuid(1);
    let r = run(&mut bench.probe(
        &[("GPUSLICE_MEMORY", &format!("{uuid1}=1GiB"))],
        &["init", "ctx:0", "totalmem:0", "totalmem:1"],
    ));
    assert_eq!(r.num("totalmem:0", "total"), 80 * GIB);
    assert_eq!(r.num("totalmem:1", "total"), GIB);
}

#[test]
fn two_processes_share_one_slice() {
    let bench = Bench::new();
    let slice = bench.slice_env("shared", "2GiB");
    let ready = bench.dir.path().join("ready").display().to_string();
    let done = bench.dir.path().join("done").display().to_string();
    let first = bench
        .probe(
            &env(&slice),
            &[
                "init",
                "ctx",
                "alloc:1G",
                &format!("ready:{ready}"),
                &format!("wait:{done}"),
            ],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while !std::path::Path::new(&ready).exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let r = run(&mut bench.probe(&env(&slice), &["init", "ctx", "meminfo", "fill:64M"]));
    std::fs::write(&done, b"").unwrap();
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(r.num("meminfo", "free"), 2 * GIB - GIB - 2 * CONTEXT);
    assert_eq!(
        r.num("fill:64M", "bytes"),
        (2 * GIB - GIB - 2 * CONTEXT) / (64 * MIB) * 64 * MIB
    );
    assert!(bench.peak(0) <= 2 * GIB);
}

#[test]
fn many_processes_allocating_at_once_never_pass_the_limit() {
    let bench = Bench::new();
    let slice = bench.slice_env("crowd", "3GiB");
    let done = bench.dir.path().join("done");
    let go = bench.dir.path().join("go");
    let ready = |i: usize| bench.dir.path().join(format!("ready{i}"));
    let has_context = |i: usize| bench.dir.path().join(format!("context{i}"));
    // Six processes make their contexts, then churn and fill at once, then all stay
    // alive until every one has finished, so that their charges are simultaneous. The
    // contexts come first, all of them: a process still making its context when
    // another fills the slice would rightly find no room for it.
    let children: Vec<_> = (0..6)
        .map(|i| {
            bench
                .probe(
                    &env(&slice),
                    &[
                        "init",
                        "ctx",
                        &format!("ready:{}", has_context(i).display()),
                        &format!("wait:{}", go.display()),
                        "churn:96M:200",
                        "fill:32M",
                        &format!("ready:{}", ready(i).display()),
                        &format!("wait:{}", done.display()),
                    ],
                )
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let start = std::time::Instant::now();
    while !(0..6).all(|i| has_context(i).exists()) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "not every probe made its context within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::fs::write(&go, b"").unwrap();
    while !(0..6).all(|i| ready(i).exists()) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let in_use = fake_gpu::in_use(bench.state(), 0);
    let ledger = gpuslice_ledger::Ledger::open(&bench.ledger("crowd")).unwrap();
    let ledger_used = ledger.devices()[0].used;
    std::fs::write(&done, b"").unwrap();
    let mut total = 0;
    let mut contexts = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let r = system_tests::Report::from(&out);
        if r.rc("ctx") == 0 {
            contexts += 1;
            total += r.num("fill:32M", "bytes");
        }
    }
    assert_eq!(contexts, 6, "all six contexts fit (1.8 GiB of 3 GiB)");
    assert!(
        total + contexts * CONTEXT <= 3 * GIB,
        "committed {total} + contexts"
    );
    assert!(
        total + contexts * CONTEXT >= 3 * GIB - 6 * 32 * MIB - 96 * MIB,
        "the slice was filled: {total}"
    );
    assert!(ledger_used <= 3 * GIB, "ledger {ledger_used}");
    assert!(
        in_use <= 3 * GIB && in_use == total + contexts * CONTEXT,
        "device {in_use}"
    );
    assert!(bench.peak(0) <= 3 * GIB, "peak {}", bench.peak(0));
}

#[test]
fn sigkilled_processes_leak_nothing() {
    let bench = Bench::new();
    let slice = bench.slice_env("killed", "2GiB");
    for round in 0..8u64 {
        let mut child = bench
            .probe(
                &env(&slice),
                &["init", "ctx", "alloc:512M", "churn:64M:100000"],
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5 + round * 7));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // Everything the killed processes held is reclaimed for the next one.
    let r = run(&mut bench.probe(&env(&slice), &["init", "ctx", "fill:64M"]));
    assert_eq!(
        r.num("fill:64M", "bytes"),
        (2 * GIB - CONTEXT) / (64 * MIB) * 64 * MIB,
        "{}",
        r.text()
    );
    let ledger = gpuslice_ledger::Ledger::open(&bench.ledger("killed")).unwrap();
    ledger.sweep_dead();
    assert_eq!(
        ledger.devices()[0].used,
        0,
        "nothing is left charged once all are gone"
    );
}

#[test]
fn a_forked_child_charges_its_own_entry() {
    let bench = Bench::new();
    let slice = bench.slice_env("fork", "2GiB");
    let r = run(&mut bench.probe(
        &env(&slice),
        &[
            "init",
            "ctx",
            "alloc:512M",
            "fork:init+ctx+alloc:256M+meminfo",
            "meminfo",
        ],
    ));
    let child = r
        .lines
        .iter()
        .find(|l| l.starts_with("child:meminfo"))
        .expect("child output")
        .clone();
    let child_free: u64 = child
        .split(' ')
        .find_map(|kv| kv.strip_prefix("free="))
        .unwrap()
        .parse()
        .unwrap();
    // The child sees the parent's context and 512 MiB, plus its own 256 MiB and its
    // context (charged by estimate: the fake driver gives a forked child no context of
    // its own, so NVML never lists it to measure).
    assert!(child_free <= 2 * GIB - CONTEXT - 768 * MIB, "{}", r.text());
    // Once the child has exited, its charges are gone and the parent's remain.
    let parent_free = r
        .lines
        .iter()
        .rev()
        .find(|l| l.starts_with("meminfo"))
        .unwrap();
    assert!(
        parent_free.contains(&format!("free={}", 2 * GIB - CONTEXT - 512 * MIB)),
        "{}",
        r.text()
    );
}

/// Runs the probe with `vars` and checks that the slice fails closed: CUDA
/// initialisation and an allocation are refused, and one line on stderr names `var`.
fn assert_fails_closed_naming(bench: &Bench, vars: &[(&str, &str)], var: &str) -> String {
    let r = run(&mut bench.probe(vars, &["init", "ctx", "alloc:1M"]));
    assert_eq!(
        r.rc("init"),
        CUDA_ERROR_NOT_PERMITTED,
        "{vars:?}: {}",
        r.text()
    );
    assert_eq!(
        r.rc("alloc:1M"),
        CUDA_ERROR_NOT_PERMITTED,
        "{vars:?}: {}",
        r.text()
    );
    assert!(
        r.stderr.contains(var),
        "{vars:?}: stderr should name {var}: {}",
        r.stderr
    );
    assert_eq!(
        r.stderr.matches("gpuslice:").count(),
        1,
        "{vars:?}: {}",
        r.stderr
    );
    r.stderr
}

#[test]
fn a_malformed_gpu_devices_uuid_fails_closed_and_never_aborts() {
    let bench = Bench::new();
    let good = fake_uuid(0);
    let doubled = format!("{good},,{good}");
    // `run` asserts the probe exits 0: a panic in the interposer would abort it.
    for list in ["NaN", "0", "GPU-zzz", "１００", "ＧPU-0", "", " ", &doubled] {
        assert_fails_closed_naming(
            &bench,
            &[("CUDA_MEM_LIMIT_0", "1GiB"), ("GPU_DEVICES_UUID", list)],
            "GPU_DEVICES_UUID",
        );
    }
    // Any case and blanks around the entries are fine.
    let spaced = format!(" {} ", good.to_ascii_uppercase().replace("GPU", "gpu"));
    let r = run(&mut bench.probe(
        &[("CUDA_MEM_LIMIT_0", "1GiB"), ("GPU_DEVICES_UUID", &spaced)],
        &["init", "ctx", "totalmem"],
    ));
    assert_eq!(r.num("totalmem", "total"), GIB, "{}", r.text());
}

#[test]
fn a_limit_for_a_gpu_that_is_not_here_fails_closed() {
    let mut bench = Bench::new();
    bench.set("FAKE_GPU_COUNT", "2");
    let (u0, u1) = (fake_uuid(0), fake_uuid(1));
    let absent = "GPU-deadbeef-0000-4000-8000-000000000000";
    let vgpu_absent = [("CUDA_MEM_LIMIT_0", "1GiB"), ("GPU_DEVICES_UUID", absent)];
    let absent_limit = format!("{absent}=4GiB");
    for (vars, var) in [
        (&[("GPUSLICE_MEMORY", "99=4GiB")][..], "GPUSLICE_MEMORY"),
        // Just past the last index.
        (&[("GPUSLICE_MEMORY", "2=4GiB")][..], "GPUSLICE_MEMORY"),
        // With a limit for every other device too.
        (&[("GPUSLICE_MEMORY", "8GiB,7=4GiB")][..], "GPUSLICE_MEMORY"),
        (
            &[("CUDA_DEVICE_MEMORY_LIMIT_5", "1g")][..],
            "CUDA_DEVICE_MEMORY_LIMIT_5",
        ),
        // A UUID, or a UUID prefix, that no GPU has.
        (
            &[("GPUSLICE_MEMORY", "GPU-deadbeef=4GiB")][..],
            "GPUSLICE_MEMORY",
        ),
        (
            &[("GPUSLICE_MEMORY", absent_limit.as_str())][..],
            "GPUSLICE_MEMORY",
        ),
        (&vgpu_absent[..], "CUDA_MEM_LIMIT_0"),
    ] {
        let stderr = assert_fails_closed_naming(&bench, vars, var);
        assert!(
            stderr.contains(&u0) && stderr.contains(&u1),
            "lists the GPUs: {stderr}"
        );
    }
    // A GPU that is here but hidden by CUDA_VISIBLE_DEVICES is no mistake, by index or
    // by UUID (then NVML tells it is here).
    for limit in ["1=1GiB", &format!("{u1}=1GiB")] {
        let r = run(&mut bench.probe(
            &[("GPUSLICE_MEMORY", limit), ("CUDA_VISIBLE_DEVICES", "0")],
            &["init", "ctx", "totalmem"],
        ));
        assert_eq!(r.rc("init"), 0, "{limit}: {}", r.text());
        assert_eq!(
            r.num("totalmem", "total"),
            80 * GIB,
            "{limit}: {}",
            r.text()
        );
    }
    // A prefix of a GPU that is here limits it.
    let r = run(&mut bench.probe(
        &[("GPUSLICE_MEMORY", &format!("{}=1GiB", &u1[..u1.len() - 2]))],
        &["init", "ctx:1", "totalmem:1"],
    ));
    assert_eq!(r.num("totalmem:1", "total"), GIB, "{}", r.text());
}

#[test]
fn without_nvml_a_uuid_that_cuda_does_not_show_fails_closed() {
    let mut bench = Bench::new();
    bench.set("FAKE_GPU_COUNT", "2");
    std::fs::remove_file(bench.dir.path().join("lib/libnvidia-ml.so.1")).unwrap();
    let (u0, u1) = (fake_uuid(0), fake_uuid(1));
    // A UUID CUDA shows needs no NVML.
    let r = run(&mut bench.probe(
        &[("GPUSLICE_MEMORY", &format!("{u0}=1GiB"))],
        &["init", "ctx", "totalmem"],
    ));
    assert_eq!(r.num("totalmem", "total"), GIB, "{}", r.text());
    // One that CUDA_VISIBLE_DEVICES hides cannot be told from one that is not here.
    let stderr = assert_fails_closed_naming(
        &bench,
        &[
            ("GPUSLICE_MEMORY", &format!("{u1}=1GiB")),
            ("CUDA_VISIBLE_DEVICES", "0"),
        ],
        "GPUSLICE_MEMORY",
    );
    assert!(stderr.contains("NVML"), "{stderr}");
}

#[test]
fn an_unknown_smi_ioctl_value_fails_closed() {
    let bench = Bench::new();
    for value in ["anything", "on", "OFF", "host_pids"] {
        for slice in [&[("GPUSLICE_MEMORY", "1GiB")][..], &[][..]] {
            let mut vars = slice.to_vec();
            vars.push(("GPUSLICE_SMI_IOCTL", value));
            assert_fails_closed_naming(&bench, &vars, "GPUSLICE_SMI_IOCTL");
        }
    }
    for value in ["off", "host-pids", "translated-broken-memory"] {
        let r = run(&mut bench.probe(
            &[("GPUSLICE_MEMORY", "1GiB"), ("GPUSLICE_SMI_IOCTL", value)],
            &["init", "ctx", "alloc:1M"],
        ));
        assert_eq!(r.rc("alloc:1M"), 0, "{value}: {}", r.text());
    }
}

#[test]
fn a_relative_ledger_path_fails_closed() {
    let bench = Bench::new();
    let cwd = tempfile::tempdir().unwrap();
    for (var, value) in [
        ("GPUSLICE_LEDGER", "slice.ledger"),
        ("GPUSLICE_LEDGER", "./ledgers/slice.ledger"),
        ("GPUSLICE_LEDGER_DIR", "ledgers"),
    ] {
        let mut cmd = bench.probe(
            &[("GPUSLICE_MEMORY", "1GiB"), (var, value)],
            &["init", "ctx", "alloc:1M"],
        );
        cmd.current_dir(cwd.path());
        let r = run(&mut cmd);
        assert_eq!(
            r.rc("init"),
            CUDA_ERROR_NOT_PERMITTED,
            "{var}: {}",
            r.text()
        );
        assert_eq!(
            r.rc("alloc:1M"),
            CUDA_ERROR_NOT_PERMITTED,
            "{var}: {}",
            r.text()
        );
        assert!(
            r.stderr.contains(var) && r.stderr.contains("relative"),
            "{var}: {}",
            r.stderr
        );
    }
    // Nothing was created in the working folder.
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0);
}

#[test]
fn a_slice_learns_what_a_context_takes_after_its_first_modules_are_loaded() {
    // A context grows as the program's first modules load (PyTorch's by about 90 MiB on
    // the H200). Measured right at its creation, the slice learned too small a context,
    // stopped measuring, and charged every later context of the slice that much too
    // little: two processes of a 4 GiB slice reached 4164 MiB on the GPU. The first
    // `cuMemGetInfo` measures it, modules included.
    let mut bench = Bench::new();
    bench
        .set("FAKE_CUDA_CONTEXT_BYTES", "300MiB")
        .set("FAKE_CUDA_MODULE_BYTES", "100MiB")
        .set("FAKE_CUDA_KERNEL_US", "10");
    let env = bench.slice_env("learn", "4GiB");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = run(&mut bench.probe(&env, &["init", "ctx", "loop:kernel:1", "meminfo"]));
    let free = r.num("meminfo", "free");
    assert_eq!(
        free,
        4 * GIB - 400 * MIB,
        "free {} MiB: the context's modules are not counted",
        free / MIB
    );
    // A later process of the slice (the first one is gone) is charged its context as
    // learned, modules included, before it loads any.
    let r = run(&mut bench.probe(&env, &["init", "ctx", "meminfo"]));
    assert_eq!(
        r.num("meminfo", "free"),
        4 * GIB - 400 * MIB,
        "{}",
        r.text()
    );
}
