//! The kubelet's gRPC APIs, generated with tonic and prost from the protos in `proto/`
//! (written from kubernetes/kubelet's `pkg/apis/*/api.proto`, field for field).
//!
//! Each API lives in a module named after its upstream folder and version:
//! [`deviceplugin::v1beta1`], [`pluginregistration::v1`], [`dra::v1`], [`dra::v1beta1`],
//! [`podresources::v1`].
//! Every module has the messages, a `*_client` module and a `*_server` module per service.
//! The constants beside them are the kubelet's own (paths, versions, health strings).

/// The device plugin API: the kubelet's `Registration` service and the plugin's
/// `DevicePlugin` service.
pub mod deviceplugin {
    /// Version v1beta1, the only one the kubelet serves (proto package `v1beta1`).
    pub mod v1beta1 {
        tonic::include_proto!("v1beta1");

        /// The API version a plugin sends in `RegisterRequest.version`.
        pub const VERSION: &str = "v1beta1";
        /// The folder where the kubelet and the device plugins put their sockets.
        pub const DEVICE_PLUGIN_PATH: &str = "/var/lib/kubelet/device-plugins";
        /// The kubelet's registration socket's file name in [`DEVICE_PLUGIN_PATH`].
        pub const KUBELET_SOCKET_NAME: &str = "kubelet.sock";
        /// `Device.health` of a usable device.
        pub const HEALTHY: &str = "Healthy";
        /// `Device.health` of a device the kubelet must not give to new pods.
        pub const UNHEALTHY: &str = "Unhealthy";
        /// The longest device ID the kubelet accepts.
        pub const MAX_DEVICE_ID_LEN: usize = 63;
    }
}

/// The plugin-watcher registration API (used by DRA and CSI plugins).
pub mod pluginregistration {
    /// Version v1 (proto package `pluginregistration`, unversioned upstream).
    pub mod v1 {
        tonic::include_proto!("pluginregistration");

        /// The folder the kubelet's plugin watcher scans for registration sockets.
        pub const PLUGINS_REGISTRY_PATH: &str = "/var/lib/kubelet/plugins_registry";
        /// `PluginInfo.type` of a DRA driver.
        pub const DRA_PLUGIN_TYPE: &str = "DRAPlugin";
        /// `PluginInfo.type` of a device plugin registering through the plugin watcher.
        pub const DEVICE_PLUGIN_TYPE: &str = "DevicePlugin";
    }
}

/// The dynamic resource allocation plugin API.
pub mod dra {
    /// Version v1 (proto package `k8s.io.kubelet.pkg.apis.dra.v1`).
    pub mod v1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");

        /// The name a driver lists in `PluginInfo.supported_versions` for this service.
        pub const SERVICE_VERSION: &str = "v1.DRAPlugin";
    }

    /// Version v1beta1 (proto package `k8s.io.kubelet.pkg.apis.dra.v1beta1`).
    pub mod v1beta1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1beta1");

        /// The name a driver lists in `PluginInfo.supported_versions` for this service.
        pub const SERVICE_VERSION: &str = "v1beta1.DRAPlugin";
    }
}

/// The pod resources API: what the kubelet gave each container (device plugin devices,
/// DRA claims, CPUs, memory), for monitoring agents.
pub mod podresources {
    /// Version v1 (proto package `v1`).
    pub mod v1 {
        tonic::include_proto!("v1");

        /// The folder of the kubelet's pod resources socket.
        pub const POD_RESOURCES_PATH: &str = "/var/lib/kubelet/pod-resources";
        /// The socket's file name in [`POD_RESOURCES_PATH`].
        pub const KUBELET_SOCKET_NAME: &str = "kubelet.sock";
    }
}

/// The encoded `FileDescriptorSet` of all the protos, for reflection and for tests.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kubelet_api.bin"));
