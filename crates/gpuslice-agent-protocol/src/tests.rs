use super::*;

fn sample_view() -> View {
    View {
        mode: DriverMode::TranslatedBrokenMemory,
        own_samples: SampleNumbering::HostPids,
        gpus: vec![
            GpuView {
                uuid: "GPU-00000000-0000-4000-8000-000000000000".into(),
                processes: vec![
                    Process {
                        pid: 1,
                        kind: ProcessKind::Compute,
                        used_memory: Some(524_288_000),
                    },
                    Process {
                        pid: 7,
                        kind: ProcessKind::Graphics,
                        used_memory: None,
                    },
                    Process {
                        pid: 9,
                        kind: ProcessKind::Mps,
                        used_memory: Some(0),
                    },
                ],
                samples: vec![Sample {
                    pid: 1,
                    timestamp: 1_732_280_000_123_456,
                    sm: 25,
                    mem: 3,
                    enc: 0,
                    dec: 1,
                }],
                accounting: vec![Accounting {
                    pid: 1,
                    gpu_util: 25,
                    mem_util: u32::MAX,
                    max_memory: u64::MAX,
                    time: 1200,
                    start_time: 1_732_279_990_000_000,
                    is_running: true,
                }],
                encoder_sessions: vec![EncoderSession {
                    session_id: 17,
                    pid: 1,
                    codec: 1,
                    h_res: 1920,
                    v_res: 1080,
                    average_fps: 30,
                    average_latency: 900,
                }],
                fbc_sessions: vec![FbcSession {
                    session_id: 4,
                    pid: 7,
                    display_ordinal: 0,
                    session_type: 1,
                    flags: 2,
                    h_max: 3840,
                    v_max: 2160,
                    h_res: 1920,
                    v_res: 1080,
                    average_fps: 60,
                    average_latency: 500,
                }],
            },
            GpuView {
                uuid: "GPU-00000000-0000-4000-8000-000000000001".into(),
                ..GpuView::default()
            },
        ],
        pids: vec![(1, 48213), (7, 48300)],
    }
}

#[test]
fn requests_round_trip() {
    let text = Request::View.encode();
    assert_eq!(text, "gpuslice-agent 1\nview\nend\n");
    assert_eq!(Request::decode(&text), Ok(Request::View));
}

#[test]
fn views_round_trip() {
    let view = sample_view();
    let text = Response::View(view.clone()).encode();
    assert!(
        text.starts_with("gpuslice-agent 1\nmode translated-broken-memory samples=host-pids\n")
    );
    assert!(text.contains("\nproc 7 graphics na\n"), "{text}");
    assert_eq!(Response::decode(&text), Ok(Response::View(view.clone())));
    assert!(
        text.contains("samples=host-pids\npid 1 48213\npid 7 48300\ngpu "),
        "{text}"
    );
    assert_eq!(view.pid_from_host(48300), Some(7));
    assert_eq!(view.host_pid_of(1), Some(48213));
    assert_eq!(view.pid_from_host(1), None);
    let empty = View {
        mode: DriverMode::Unknown,
        own_samples: SampleNumbering::Unknown,
        gpus: vec![],
        pids: vec![],
    };
    let text = Response::View(empty.clone()).encode();
    assert_eq!(Response::decode(&text), Ok(Response::View(empty)));
    assert_eq!(
        view.gpu("gpu-00000000-0000-4000-8000-000000000001")
            .map(|g| g.processes.len()),
        Some(0)
    );
}

#[test]
fn every_mode_and_kind_has_a_word() {
    for m in [
        DriverMode::HostPids,
        DriverMode::TranslatedBrokenMemory,
        DriverMode::Translated,
        DriverMode::Unknown,
    ] {
        assert_eq!(DriverMode::parse(m.as_str()), Some(m));
    }
    for s in [
        SampleNumbering::Translated,
        SampleNumbering::HostPids,
        SampleNumbering::Unknown,
    ] {
        assert_eq!(SampleNumbering::parse(s.as_str()), Some(s));
    }
    for k in [
        ProcessKind::Compute,
        ProcessKind::Graphics,
        ProcessKind::Mps,
    ] {
        assert_eq!(ProcessKind::parse(k.as_str()), Some(k));
    }
}

#[test]
fn errors_round_trip_and_are_sanitised() {
    let text = Response::Error("no\nway\tout".into()).encode();
    assert_eq!(text, "gpuslice-agent 1\nerror no way out\nend\n");
    assert_eq!(
        Response::decode(&text),
        Ok(Response::Error("no way out".into()))
    );
    let text = Response::Error(" \n".into()).encode();
    assert_eq!(
        Response::decode(&text),
        Ok(Response::Error("unspecified".into()))
    );
}

fn decode_err(text: &str) -> ProtocolError {
    match Response::decode(text) {
        Err(e) => e,
        Ok(r) => panic!("{text:?} decoded as {r:?}"),
    }
}

#[test]
fn malformed_responses_are_refused() {
    let good = Response::View(sample_view()).encode();
    // Header, version and framing.
    assert!(
        decode_err("gpuslice-agent 2\nmode translated samples=unknown\nend\n")
            .reason
            .contains("unsupported protocol version")
    );
    assert_eq!(decode_err("hello\nend\n").line, 1);
    assert!(
        decode_err(good.trim_end_matches('\n'))
            .reason
            .contains("newline")
    );
    assert!(
        decode_err(&good.replace("end\n", ""))
            .reason
            .contains("`end`")
    );
    assert!(
        decode_err(&format!("{good}gpu x\n"))
            .reason
            .contains("`end`")
    );
    assert!(
        decode_err("gpuslice-agent 1\nend\n")
            .reason
            .contains("empty")
    );
    // Records.
    let cases = [
        ("mode sideways samples=unknown", "driver mode"),
        ("mode translated", "starts with"),
        ("mode translated samples=maybe", "sample numbering"),
        (
            "mode translated samples=unknown\nproc 1 compute 5",
            "before any `gpu`",
        ),
        ("mode translated samples=unknown\ngpu", "one field"),
        ("mode translated samples=unknown\npid 1", "takes 2 fields"),
        ("mode translated samples=unknown\npid 1 x", "number"),
        (
            "mode translated samples=unknown\ngpu G\npid 1 2",
            "before the first `gpu`",
        ),
        ("mode translated samples=unknown\ngpu a b", "one field"),
        (
            "mode translated samples=unknown\ngpu G\nproc 1 compute",
            "takes 3 fields",
        ),
        (
            "mode translated samples=unknown\ngpu G\nproc 1 vulkan 5",
            "process kind",
        ),
        (
            "mode translated samples=unknown\ngpu G\nproc -1 compute 5",
            "not a number",
        ),
        (
            "mode translated samples=unknown\ngpu G\nproc 4294967296 compute 5",
            "out of range",
        ),
        (
            "mode translated samples=unknown\ngpu G\nproc 1 compute 18446744073709551616",
            "out of range",
        ),
        (
            "mode translated samples=unknown\ngpu G\nproc 1 compute 0x10",
            "not a number",
        ),
        (
            "mode translated samples=unknown\ngpu G\nsample 1 2 3 4 5",
            "takes 6 fields",
        ),
        (
            "mode translated samples=unknown\ngpu G\nacct 1 2 3 4 5 6 2",
            "isRunning",
        ),
        (
            "mode translated samples=unknown\ngpu G\nenc 1 2 3 4 5 6",
            "takes 7 fields",
        ),
        (
            "mode translated samples=unknown\ngpu G\nfbc 1 2 3 4 5 6 7 8 9 10",
            "takes 11 fields",
        ),
        (
            "mode translated samples=unknown\ngpu G\nsecret 1",
            "unknown record",
        ),
        ("mode translated samples=unknown\ngpu G\n", "stray space"),
        ("mode translated samples=unknown\ngpu  G", "stray space"),
        ("mode translated samples=unknown\ngpu G\u{7}", "control"),
        ("error boom\ngpu G", "nothing may follow"),
    ];
    for (body, want) in cases {
        let text = format!("gpuslice-agent 1\n{body}\nend\n");
        let e = decode_err(&text);
        assert!(
            e.reason.contains(want),
            "{body:?}: expected {want:?}, got {e}"
        );
        assert!(e.line >= 1, "{body:?}: {e}");
    }
    let long = format!(
        "gpuslice-agent 1\nmode translated samples=unknown\ngpu {}\nend\n",
        "G".repeat(MAX_LINE)
    );
    assert!(decode_err(&long).reason.contains("longer than"));
    assert!(
        decode_err("gpuslice-agent 1\nerror caf\u{e9}\nend\n")
            .reason
            .contains("ASCII")
    );
}

#[test]
fn malformed_requests_are_refused() {
    for (text, want) in [
        ("gpuslice-agent 1\nend\n", "empty"),
        ("gpuslice-agent 1\nshow\nend\n", "unknown request"),
        ("gpuslice-agent 1\nview\nview\nend\n", "exactly one"),
        ("gpuslice-agent 0\nview\nend\n", "version"),
        ("view\nend\n", "does not start"),
    ] {
        let e = Request::decode(text).expect_err(text);
        assert!(e.reason.contains(want), "{text:?}: {e}");
    }
}

#[test]
fn read_message_stops_at_end_and_limits_size() {
    let mut input: &[u8] = b"gpuslice-agent 1\nview\nend\nextra";
    assert_eq!(
        read_message(&mut input).unwrap(),
        "gpuslice-agent 1\nview\nend\n"
    );
    let mut short: &[u8] = b"gpuslice-agent 1\nview\n";
    assert_eq!(
        read_message(&mut short).unwrap_err().kind(),
        std::io::ErrorKind::UnexpectedEof
    );
    let huge = "x\n".repeat(MAX_MESSAGE);
    let mut huge_reader = huge.as_bytes();
    assert!(read_message(&mut huge_reader).is_err());
}

#[test]
fn client_talks_to_a_server_and_times_out() {
    let dir = std::env::temp_dir().join(format!("gpuslice-proto-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("agent.sock");
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        // First connection: a proper answer.
        let (mut s, _) = listener.accept().unwrap();
        let req = read_message(&mut s).unwrap();
        assert_eq!(Request::decode(&req), Ok(Request::View));
        s.write_all(Response::View(sample_view()).encode().as_bytes())
            .unwrap();
        // Second: never answers (kept open until the end).
        let (_silent, _) = listener.accept().unwrap();
        // Third: garbage.
        let (mut s3, _) = listener.accept().unwrap();
        let _ = read_message(&mut s3);
        s3.write_all(b"gpuslice-agent 1\nmode x samples=y\nend\n")
            .unwrap();
    });
    let timeout = Duration::from_millis(200);
    let r = query(&path, Request::View, timeout).unwrap();
    assert_eq!(r, Response::View(sample_view()));
    let t0 = std::time::Instant::now();
    let e = query(&path, Request::View, timeout).unwrap_err();
    assert!(matches!(e, ClientError::Io { .. }), "{e}");
    assert!(t0.elapsed() < Duration::from_millis(500));
    let e = query(&path, Request::View, timeout).unwrap_err();
    assert!(matches!(e, ClientError::Protocol { .. }), "{e}");
    assert!(e.to_string().contains("agent.sock"), "{e}");
    server.join().unwrap();
    let e = query(&dir.join("missing.sock"), Request::View, timeout).unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }));
    assert!(e.to_string().contains("missing.sock"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
