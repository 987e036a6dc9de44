//! Checks the compiled protos against upstream's API, written out below from
//! kubernetes/kubelet's `pkg/apis/{deviceplugin/v1beta1,pluginregistration/v1,dra/v1,
//! dra/v1beta1,podresources/v1}/api.proto`: every package, message, field (name, number, label, type),
//! service and method. A field renumbered or renamed by mistake breaks the wire format
//! silently; this test makes it loud.

use std::collections::BTreeSet;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

/// Upstream, one line per message (`package.Message field=number:type ...`) and per method
/// (`package.Service/Method(Input) returns (Output)`, `stream` where upstream streams).
const UPSTREAM: &str = "
v1beta1.DevicePluginOptions pre_start_required=1:bool get_preferred_allocation_available=2:bool
v1beta1.RegisterRequest version=1:string endpoint=2:string resource_name=3:string options=4:DevicePluginOptions
v1beta1.Empty
v1beta1.ListAndWatchResponse devices=1:repeated:Device
v1beta1.TopologyInfo nodes=1:repeated:NUMANode
v1beta1.NUMANode ID=1:int64
v1beta1.Device ID=1:string health=2:string topology=3:TopologyInfo
v1beta1.PreStartContainerRequest devices_ids=1:repeated:string
v1beta1.PreStartContainerResponse
v1beta1.PreferredAllocationRequest container_requests=1:repeated:ContainerPreferredAllocationRequest
v1beta1.ContainerPreferredAllocationRequest available_deviceIDs=1:repeated:string must_include_deviceIDs=2:repeated:string allocation_size=3:int32
v1beta1.PreferredAllocationResponse container_responses=1:repeated:ContainerPreferredAllocationResponse
v1beta1.ContainerPreferredAllocationResponse deviceIDs=1:repeated:string
v1beta1.AllocateRequest container_requests=1:repeated:ContainerAllocateRequest
v1beta1.ContainerAllocateRequest devices_ids=1:repeated:string
v1beta1.CDIDevice name=1:string
v1beta1.AllocateResponse container_responses=1:repeated:ContainerAllocateResponse
v1beta1.ContainerAllocateResponse envs=1:map<string,string> mounts=2:repeated:Mount devices=3:repeated:DeviceSpec annotations=4:map<string,string> cdi_devices=5:repeated:CDIDevice
v1beta1.Mount container_path=1:string host_path=2:string read_only=3:bool
v1beta1.DeviceSpec container_path=1:string host_path=2:string permissions=3:string
v1beta1.Registration/Register(RegisterRequest) returns (Empty)
v1beta1.DevicePlugin/GetDevicePluginOptions(Empty) returns (DevicePluginOptions)
v1beta1.DevicePlugin/ListAndWatch(Empty) returns (stream ListAndWatchResponse)
v1beta1.DevicePlugin/GetPreferredAllocation(PreferredAllocationRequest) returns (PreferredAllocationResponse)
v1beta1.DevicePlugin/Allocate(AllocateRequest) returns (AllocateResponse)
v1beta1.DevicePlugin/PreStartContainer(PreStartContainerRequest) returns (PreStartContainerResponse)

pluginregistration.PluginInfo type=1:string name=2:string endpoint=3:string supported_versions=4:repeated:string
pluginregistration.RegistrationStatus plugin_registered=1:bool error=2:string
pluginregistration.RegistrationStatusResponse
pluginregistration.InfoRequest
pluginregistration.Registration/GetInfo(InfoRequest) returns (PluginInfo)
pluginregistration.Registration/NotifyRegistrationStatus(RegistrationStatus) returns (RegistrationStatusResponse)

k8s.io.kubelet.pkg.apis.dra.v1.NodePrepareResourcesRequest claims=1:repeated:Claim
k8s.io.kubelet.pkg.apis.dra.v1.NodePrepareResourcesResponse claims=1:map<string,NodePrepareResourceResponse>
k8s.io.kubelet.pkg.apis.dra.v1.NodePrepareResourceResponse devices=1:repeated:Device error=2:string
k8s.io.kubelet.pkg.apis.dra.v1.Device request_names=1:repeated:string pool_name=2:string device_name=3:string cdi_device_ids=4:repeated:string share_id=5:optional:string
k8s.io.kubelet.pkg.apis.dra.v1.NodeUnprepareResourcesRequest claims=1:repeated:Claim
k8s.io.kubelet.pkg.apis.dra.v1.NodeUnprepareResourcesResponse claims=1:map<string,NodeUnprepareResourceResponse>
k8s.io.kubelet.pkg.apis.dra.v1.NodeUnprepareResourceResponse error=1:string
k8s.io.kubelet.pkg.apis.dra.v1.Claim namespace=1:string uid=2:string name=3:string
k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources(NodePrepareResourcesRequest) returns (NodePrepareResourcesResponse)
k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodeUnprepareResources(NodeUnprepareResourcesRequest) returns (NodeUnprepareResourcesResponse)

k8s.io.kubelet.pkg.apis.dra.v1beta1.NodePrepareResourcesRequest claims=1:repeated:Claim
k8s.io.kubelet.pkg.apis.dra.v1beta1.NodePrepareResourcesResponse claims=1:map<string,NodePrepareResourceResponse>
k8s.io.kubelet.pkg.apis.dra.v1beta1.NodePrepareResourceResponse devices=1:repeated:Device error=2:string
k8s.io.kubelet.pkg.apis.dra.v1beta1.Device request_names=1:repeated:string pool_name=2:string device_name=3:string cdi_device_ids=4:repeated:string
k8s.io.kubelet.pkg.apis.dra.v1beta1.NodeUnprepareResourcesRequest claims=1:repeated:Claim
k8s.io.kubelet.pkg.apis.dra.v1beta1.NodeUnprepareResourcesResponse claims=1:map<string,NodeUnprepareResourceResponse>
k8s.io.kubelet.pkg.apis.dra.v1beta1.NodeUnprepareResourceResponse error=1:string
k8s.io.kubelet.pkg.apis.dra.v1beta1.Claim namespace=1:string uid=2:string name=3:string
k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodePrepareResources(NodePrepareResourcesRequest) returns (NodePrepareResourcesResponse)
k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodeUnprepareResources(NodeUnprepareResourcesRequest) returns (NodeUnprepareResourcesResponse)

v1.AllocatableResourcesRequest
v1.AllocatableResourcesResponse devices=1:repeated:ContainerDevices cpu_ids=2:repeated:int64 memory=3:repeated:ContainerMemory
v1.ListPodResourcesRequest
v1.ListPodResourcesResponse pod_resources=1:repeated:PodResources
v1.PodResources name=1:string namespace=2:string containers=3:repeated:ContainerResources cpu_ids=4:repeated:int64 memory=5:repeated:ContainerMemory
v1.ContainerResources name=1:string devices=2:repeated:ContainerDevices cpu_ids=3:repeated:int64 memory=4:repeated:ContainerMemory dynamic_resources=5:repeated:DynamicResource
v1.ContainerMemory memory_type=1:string size=2:uint64 topology=3:TopologyInfo
v1.ContainerDevices resource_name=1:string device_ids=2:repeated:string topology=3:TopologyInfo
v1.TopologyInfo nodes=1:repeated:NUMANode
v1.NUMANode ID=1:int64
v1.DynamicResource claim_name=2:string claim_namespace=3:string claim_resources=4:repeated:ClaimResource
v1.ClaimResource cdi_devices=1:repeated:CDIDevice driver_name=2:string pool_name=3:string device_name=4:string share_id=5:optional:string
v1.CDIDevice name=1:string
v1.GetPodResourcesRequest pod_name=1:string pod_namespace=2:string
v1.GetPodResourcesResponse pod_resources=1:PodResources
v1.PodResourcesLister/List(ListPodResourcesRequest) returns (ListPodResourcesResponse)
v1.PodResourcesLister/GetAllocatableResources(AllocatableResourcesRequest) returns (AllocatableResourcesResponse)
v1.PodResourcesLister/Get(GetPodResourcesRequest) returns (GetPodResourcesResponse)
";

/// The last part of a fully qualified type name (`.v1beta1.Device` → `Device`).
fn short(type_name: &str) -> &str {
    type_name.rsplit('.').next().unwrap_or(type_name)
}

fn scalar(ty: Type) -> &'static str {
    match ty {
        Type::String => "string",
        Type::Bool => "bool",
        Type::Int32 => "int32",
        Type::Int64 => "int64",
        Type::Uint64 => "uint64",
        other => panic!("the kubelet's protos use no {other:?} fields"),
    }
}

fn field_type(message: &DescriptorProto, field: &prost_types::FieldDescriptorProto) -> String {
    let base = match field.r#type() {
        Type::Message => short(field.type_name()).to_string(),
        other => scalar(other).to_string(),
    };
    if field.r#type() == Type::Message {
        // A map field is a repeated field of a nested `*Entry` message marked map_entry.
        if let Some(entry) = message
            .nested_type
            .iter()
            .find(|n| n.name() == base && n.options.as_ref().is_some_and(|o| o.map_entry()))
        {
            let part = |i: usize| {
                let f = &entry.field[i];
                match f.r#type() {
                    Type::Message => short(f.type_name()).to_string(),
                    other => scalar(other).to_string(),
                }
            };
            return format!("map<{},{}>", part(0), part(1));
        }
    }
    if field.proto3_optional() {
        format!("optional:{base}")
    } else if field.label() == Label::Repeated {
        format!("repeated:{base}")
    } else {
        base
    }
}

fn compiled() -> BTreeSet<String> {
    let files =
        FileDescriptorSet::decode(kubelet_api::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let mut lines = BTreeSet::new();
    for file in &files.file {
        let package = file.package();
        for message in &file.message_type {
            let mut line = format!("{package}.{}", message.name());
            for field in &message.field {
                line.push_str(&format!(
                    " {}={}:{}",
                    field.name(),
                    field.number(),
                    field_type(message, field)
                ));
            }
            lines.insert(line);
        }
        for service in &file.service {
            for method in &service.method {
                let stream = |s: bool| if s { "stream " } else { "" };
                lines.insert(format!(
                    "{package}.{}/{}({}{}) returns ({}{})",
                    service.name(),
                    method.name(),
                    stream(method.client_streaming()),
                    short(method.input_type()),
                    stream(method.server_streaming()),
                    short(method.output_type()),
                ));
            }
        }
    }
    lines
}

#[test]
fn protos_match_upstream_field_by_field() {
    let upstream: BTreeSet<String> = UPSTREAM
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let ours = compiled();
    let missing: Vec<_> = upstream.difference(&ours).collect();
    let extra: Vec<_> = ours.difference(&upstream).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the protos differ from upstream\nupstream has, ours lacks:\n{missing:#?}\nours has, upstream lacks:\n{extra:#?}"
    );
}

#[test]
fn generated_modules_are_where_the_docs_say() {
    use kubelet_api::{deviceplugin::v1beta1, dra, pluginregistration::v1 as reg};
    let request = v1beta1::RegisterRequest {
        version: v1beta1::VERSION.into(),
        endpoint: "gpuslice.sock".into(),
        resource_name: "gpuslice.io/slice-8g".into(),
        options: Some(v1beta1::DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: true,
        }),
    };
    let bytes = request.encode_to_vec();
    assert_eq!(
        v1beta1::RegisterRequest::decode(bytes.as_slice()).unwrap(),
        request
    );
    let _ = reg::PluginInfo::default();
    let device = dra::v1::Device {
        share_id: Some("share".into()),
        ..Default::default()
    };
    assert_eq!(device.share_id.as_deref(), Some("share"));
    let _ = dra::v1beta1::Claim::default();
    let resource = kubelet_api::podresources::v1::ClaimResource {
        cdi_devices: vec![kubelet_api::podresources::v1::CdiDevice {
            name: "gpuslice.io/slice=x".into(),
        }],
        driver_name: "gpuslice.io".into(),
        share_id: None,
        ..Default::default()
    };
    let bytes = resource.encode_to_vec();
    assert_eq!(
        kubelet_api::podresources::v1::ClaimResource::decode(bytes.as_slice()).unwrap(),
        resource
    );
}
