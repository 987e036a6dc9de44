//! The node plugin's real slice provider, end to end on the fake GPU: the fake kubelet
//! registers the plugin and allocates a slice; the CDI device it gets back is applied to
//! a real OCI container (as `oci_container.rs` does: `gpuslice-cdi-inject`, then `runc`
//! or `crun`), where a probe sees the slice's memory limit and is refused past it. A
//! second slice of the same GPU gets a ledger of its own, and asking again for the first
//! gives the same one.
//!
//! Needs root, python3 and `runc` or `crun`; without them the test prints why it was
//! skipped.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fake_kubelet::FakeKubelet;
use gpuslice_host::HostLayout;
use gpuslice_host::cdi::DriverLibs;
use gpuslice_host::gpus::HostGpu;
use gpuslice_host::provision::{ProvisionOptions, Provisioner, slice_name};
use gpuslice_node::NodeConfig;
use gpuslice_node::host_provider::{HostProvider, HostSlices};
use gpuslice_node::inventory::{GpuHealth, GpuInfo, StaticGpus};
use system_tests::{
    Bench, GIB, Report, fake_uuid, inject_cdi_device, oci_runtime, probe_bundle, run_container,
};

const WAIT: Duration = Duration::from_secs(30);

/// Registers the plugin with a fake kubelet and allocates the first two `1g` slices of
/// GPU 0 (and the first again), returning the CDI device names and the `GPUSLICE_LEDGER`
/// each allocation's environment carries.
fn allocate_through_the_kubelet(host: &Path, bench: &Bench) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), async {
            let plugins = host.join("device-plugins");
            std::fs::create_dir_all(&plugins).unwrap();
            let mut kubelet = FakeKubelet::start(&plugins).await.unwrap();
            let config = NodeConfig::from_yaml(
                "default:\n  profiles:\n    - {name: 1g, memory: 1GiB, count: 2}\n",
                "test config",
            )
            .unwrap();
            let gpus = Arc::new(StaticGpus::new(vec![GpuInfo {
                uuid: fake_uuid(0),
                index: 0,
                name: "Fake GPU".into(),
                memory: 80 * GIB,
                health: GpuHealth::Healthy,
            }]));
            let provisioner = Provisioner::new(&ProvisionOptions {
                layout: HostLayout::new(host.join("state"), host.join("agent")),
                cdi_dir: host.join("cdi"),
                lib: bench.interposer(),
                dev_root: host.join("root"),
                driver_root: "/".into(),
                driver_libs: DriverLibs::Off,
            })
            .unwrap();
            let provider = HostProvider::new(HostSlices::new(
                provisioner,
                Box::new(|| {
                    Ok(vec![HostGpu {
                        index: 0,
                        uuid: fake_uuid(0),
                        minor: 0,
                        memory: None,
                    }])
                }),
            ));
            let mut options = gpuslice_node::NodeOptions::new("node-1");
            options.device_plugin_dir = plugins.clone();
            options.register_retry = Duration::from_millis(100);
            options.register_timeout = WAIT;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let node = tokio::spawn(async move {
                gpuslice_node::run(&config, options, gpus, Arc::new(provider), async {
                    let _ = stopped.await;
                })
                .await
            });
            let mut plugin = kubelet.next_registration(WAIT).await.unwrap();
            assert_eq!(plugin.resource(), "gpuslice.io/slice-1g");
            let first = format!("{}::1g-0", fake_uuid(0));
            let second = format!("{}::1g-1", fake_uuid(0));
            let mut names = Vec::new();
            for id in [&first, &second, &first] {
                let response = plugin.allocate(&[&[id.as_str()]]).await.unwrap();
                let c = &response.container_responses[0];
                assert_eq!(c.cdi_devices.len(), 1, "{c:?}");
                names.push(c.cdi_devices[0].name.clone());
                // The same slice for runtimes without CDI.
                assert_eq!(
                    c.envs.get("GPUSLICE_LEDGER").map(String::as_str),
                    Some("/run/gpuslice/slice/ledger")
                );
                assert!(
                    c.mounts.iter().any(|m| m.host_path
                        == host
                            .join("state/slices")
                            .join(slice_name(id))
                            .display()
                            .to_string()),
                    "{c:?}"
                );
            }
            // Two slices on one container are refused, naming them.
            let err = plugin
                .allocate(&[&[first.as_str(), second.as_str()]])
                .await
                .unwrap_err();
            assert!(err.message().contains("one gpuslice slice"), "{err:?}");
            drop(plugin);
            let _ = stop.send(());
            tokio::time::timeout(WAIT, node)
                .await
                .expect("the plugin stopped")
                .unwrap()
                .unwrap();
            kubelet.stop().await;
            names
        })
        .await
        .expect("the kubelet flow did not finish in time")
    })
}

#[test]
fn a_slice_allocated_through_the_kubelet_holds_in_a_real_container() {
    let bench = Bench::new();
    let runtime = match oci_runtime(&bench) {
        Ok(r) => r,
        Err(why) => {
            eprintln!(
                "SKIPPED a_slice_allocated_through_the_kubelet_holds_in_a_real_container: {why}"
            );
            return;
        }
    };
    let host = bench.dir.path();
    let s = |p: &Path| p.display().to_string();
    system_tests::fake_device_nodes(host);

    let names = allocate_through_the_kubelet(host, &bench);
    let first = slice_name(&format!("{}::1g-0", fake_uuid(0)));
    let second = slice_name(&format!("{}::1g-1", fake_uuid(0)));
    assert_eq!(
        names,
        [
            format!("gpuslice.io/slice={first}"),
            format!("gpuslice.io/slice={second}"),
            format!("gpuslice.io/slice={first}"),
        ]
    );
    // Two slices of one GPU: two ledgers.
    let ledger = |name: &str| host.join("state/slices").join(name).join("ledger");
    assert!(ledger(&first).exists() && ledger(&second).exists());

    // The container: the image's environment asks for more, the device's edits win.
    let probe = s(&bench.build.join("cuda-probe"));
    let script =
        format!("set -e; test -z \"$LD_PRELOAD\"; {probe} init ctx meminfo alloc:2G fill:64M");
    let bundle = host.join("bundle");
    probe_bundle(&bench, &bundle, "k1", host, &script);

    inject_cdi_device(&bench, &host.join("cdi"), &names[0], &bundle);
    let out = run_container(
        &runtime,
        &host.join("runtime-state"),
        &bundle,
        &format!("gs-k1-{}", std::process::id()),
        Duration::from_secs(120),
    );
    let r = Report::from(&out);
    assert!(out.status.success(), "{runtime} run failed: {}", r.text());
    assert_eq!(r.rc("init"), 0, "{}", r.text());
    assert_eq!(r.num("meminfo", "total"), GIB, "{}", r.text());
    assert_ne!(r.rc("alloc:2G"), 0, "2 GiB in a 1 GiB slice: {}", r.text());
    assert!(r.num("fill:64M", "bytes") < GIB, "{}", r.text());
    assert!(bench.peak(0) <= GIB, "peak {} > 1 GiB", bench.peak(0));
    // The processes ran in the first slice's ledger, not the second's.
    assert!(
        gpuslice_ledger::Ledger::open(&ledger(&second))
            .unwrap()
            .processes()
            .is_empty()
    );
}
