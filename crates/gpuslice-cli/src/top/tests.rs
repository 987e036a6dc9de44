//! `gpuslice top`'s drawing and keys, on ratatui's `TestBackend` (no terminal).

use std::time::{Duration, Instant};

use gpuslice_host::gpus::GpuUsage;
use gpuslice_host::listing::{
    Alive, DeviceStatus, Origin, ProcessDevice, ProcessStatus, SliceStatus, StatusReport,
};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::model::{Model, Reading};
use super::view::{Action, Mode, ViewState, buffer_text, plain_text, render};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const A: &str = "GPU-aaaa1111-0000-4000-8000-000000000000";
const B: &str = "GPU-bbbb2222-0000-4000-8000-000000000000";

fn device(uuid: &str, limit: u64, used: u64) -> DeviceStatus {
    DeviceStatus {
        uuid: uuid.into(),
        limit_bytes: limit,
        used_bytes: used,
        busy_ns: 0,
        refused_allocations: 0,
        throttled_ns: 0,
    }
}

fn process(pid: u32, uuid: &str, charged: u64) -> ProcessStatus {
    ProcessStatus {
        pid,
        alive: Alive::Alive,
        devices: vec![ProcessDevice {
            uuid: uuid.into(),
            charged_bytes: charged,
            context_bytes: 300 * MIB,
        }],
    }
}

fn slice(name: &str, devices: Vec<DeviceStatus>, processes: Vec<ProcessStatus>) -> SliceStatus {
    SliceStatus {
        name: name.into(),
        origin: Origin::Run,
        path: format!("/ledgers/{name}.ledger"),
        created_unix: Some(1),
        default_limit_bytes: None,
        compute_percent: None,
        compute_burst_percent: None,
        devices,
        processes,
        error: None,
        error_kind: None,
    }
}

/// A host of two GPUs: `train` (1 GiB on GPU 0, a process), `infer` (30% compute,
/// throttled, refused allocations, on both GPUs), a slice whose ledger is damaged, and
/// one with a long name; two readings 2 s apart, `infer` busy 0.5 s of them on GPU 0.
fn host() -> Model {
    let t0 = Instant::now();
    let slices = |busy: u64| {
        let mut infer = slice(
            "infer",
            vec![device(A, 4 * GIB, 2 * GIB), device(B, 4 * GIB, 0)],
            vec![process(20, A, 2 * GIB), process(21, A, 0)],
        );
        infer.compute_percent = Some(30);
        infer.devices[0].busy_ns = busy;
        infer.devices[0].throttled_ns = 7_300_000_000;
        infer.devices[0].refused_allocations = 4;
        infer.processes[1].devices.clear();
        let mut broken = slice("broken", Vec::new(), Vec::new());
        broken.error = Some("the ledger is cut short".into());
        broken.error_kind = Some("truncated");
        vec![
            slice(
                "train",
                vec![device(A, GIB, 400 * MIB)],
                vec![process(10, A, 400 * MIB)],
            ),
            infer,
            broken,
            slice(
                "a-very-long-slice-name-for-the-table",
                vec![device(A, 2 * GIB, 0)],
                Vec::new(),
            ),
        ]
    };
    let reading = |busy, at| Reading {
        report: StatusReport {
            slices: slices(busy),
            notes: Vec::new(),
        },
        gpus: Ok(vec![
            GpuUsage {
                index: 0,
                uuid: A.into(),
                memory_total: Some(80 * GIB),
                memory_used: Some(3 * GIB),
                utilization_percent: Some(42),
            },
            GpuUsage {
                index: 1,
                uuid: B.into(),
                memory_total: Some(80 * GIB),
                memory_used: Some(0),
                utilization_percent: Some(0),
            },
        ]),
        at,
        unix: 1_700_000_000,
        looked: "/ledgers".into(),
    };
    Model::build(
        Some(&reading(1_000_000_000, t0)),
        &reading(1_500_000_000, t0 + Duration::from_secs(2)),
    )
}

/// The screen after drawing `model` at `width` x `height`.
fn screen(model: &Model, state: &mut ViewState, width: u16, height: u16) -> Vec<String> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal
        .draw(|f| {
            let area = f.area();
            render(model, state, Mode::Live, area, f.buffer_mut());
        })
        .unwrap();
    buffer_text(terminal.backend().buffer())
        .lines()
        .map(str::to_string)
        .collect()
}

fn line_with<'a>(lines: &'a [String], text: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.contains(text))
        .unwrap_or_else(|| panic!("no line with {text:?} in\n{}", lines.join("\n")))
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

#[test]
fn the_80_by_24_screen_shows_gpus_and_every_slice_row() {
    let model = host();
    let mut state = ViewState::default();
    state.follow(&model);
    let lines = screen(&model, &mut state, 80, 24);
    let text = lines.join("\n");
    assert!(
        lines[0].starts_with("gpuslice top  22:13:20 UTC  4 slices  2 GPUs"),
        "{text}"
    );
    // GPU 0: NVML's numbers, the slices' limits summed (1 + 4 + 2 GiB), 30% compute.
    let gpu0 = line_with(&lines, "GPU-aaaa");
    for cell in ["[", "3GiB/80GiB", "7GiB", "30%", "42%"] {
        assert!(gpu0.contains(cell), "{gpu0}");
    }
    assert!(gpu0.contains('…'), "the UUID is cut to fit: {gpu0}");
    // train: 400 MiB of 1 GiB, a bar three eighths full, no compute limit.
    let train = line_with(&lines, "train");
    for cell in ["[|||     ]", "400MiB/1GiB", " - ", "0.0s"] {
        assert!(train.contains(cell), "{train}");
    }
    assert!(
        train.starts_with("+train "),
        "collapsed, processes to show: {train}"
    );
    // infer: 0.5 s busy in 2 s is 25% against its 30%; 7.3 s throttled; 4 refused;
    // one process holds memory on GPU 0 (the other holds nothing); a second row for GPU 1.
    let infer = line_with(&lines, "infer");
    for cell in ["2GiB/4GiB", "25%/30%", "7.3s", " 4 ", " 1"] {
        assert!(infer.contains(cell), "{cell} in {infer}");
    }
    let second = &lines[lines.iter().position(|l| l.contains("infer")).unwrap() + 1];
    assert!(
        second.trim_start().starts_with("1 ") && second.contains("0B/4GiB"),
        "{second}"
    );
    assert!(second.contains("0%/30%"), "not busy on GPU 1: {second}");
    let broken = line_with(&lines, "broken");
    assert!(
        broken.contains("FAILED") && broken.contains("truncated"),
        "{broken}"
    );
    // The long name is cut with an ellipsis; every line fits.
    assert!(text.contains("a-very-long-sl…"), "{text}");
    assert!(lines.iter().all(|l| l.chars().count() <= 80));
}

#[test]
fn keys_select_expand_and_quit() {
    let model = host();
    let mut state = ViewState::default();
    state.follow(&model);
    // Processes are hidden until asked for.
    assert!(
        !screen(&model, &mut state, 80, 24)
            .join("\n")
            .contains("pid 10")
    );
    assert_eq!(state.on_key(&model, key(KeyCode::Enter)), Action::Redraw);
    let lines = screen(&model, &mut state, 80, 24);
    let pid = line_with(&lines, "pid 10");
    assert!(pid.contains("alive") && pid.contains("400MiB"), "{pid}");
    assert!(line_with(&lines, "train").starts_with("-train"));
    // Down to infer, Right shows its processes, Left hides them; train stays open.
    assert_eq!(state.on_key(&model, key(KeyCode::Down)), Action::Redraw);
    assert_eq!(state.selected, 1);
    state.on_key(&model, key(KeyCode::Right));
    let text = screen(&model, &mut state, 80, 24).join("\n");
    assert!(text.contains("pid 20") && text.contains("pid 21"), "{text}");
    state.on_key(&model, key(KeyCode::Left));
    let text = screen(&model, &mut state, 80, 24).join("\n");
    assert!(
        !text.contains("pid 20") && text.contains("pid 10"),
        "{text}"
    );
    // The selection stops at both ends.
    for _ in 0..10 {
        state.on_key(&model, key(KeyCode::Down));
    }
    assert_eq!(state.selected, 3);
    for _ in 0..10 {
        state.on_key(&model, key(KeyCode::Up));
    }
    assert_eq!(state.selected, 0);
    assert_eq!(
        state.on_key(&model, key(KeyCode::Char('x'))),
        Action::Ignore
    );
    for quit in [
        key(KeyCode::Char('q')),
        key(KeyCode::Esc),
        KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
    ] {
        assert_eq!(state.on_key(&model, quit), Action::Quit, "{quit:?}");
    }
}

#[test]
fn the_selection_follows_its_slice_into_the_next_model() {
    let model = host();
    let mut state = ViewState::default();
    state.follow(&model);
    state.on_key(&model, key(KeyCode::Down));
    state.on_key(&model, key(KeyCode::Enter));
    // train is gone: infer is still selected, now first, and still expanded.
    let mut fewer = model.clone();
    fewer.slices.remove(0);
    state.follow(&fewer);
    assert_eq!(state.selected, 0);
    assert!(state.expanded.contains("/ledgers/infer.ledger"));
    // Everything gone: nothing to select, and the screen says where it looked.
    fewer.slices.clear();
    state.follow(&fewer);
    assert!(state.expanded.is_empty());
    assert_eq!(state.on_key(&fewer, key(KeyCode::Enter)), Action::Ignore);
    let text = screen(&fewer, &mut state, 80, 24).join("\n");
    assert!(text.contains("no slices in /ledgers"), "{text}");
}

#[test]
fn a_long_list_scrolls_to_the_selection() {
    let mut model = host();
    let template = model.slices[0].clone();
    model.slices = (0..60)
        .map(|i| {
            let mut s = template.clone();
            s.name = format!("slice-{i:02}");
            s.key = format!("/ledgers/{i}");
            s
        })
        .collect();
    let mut state = ViewState::default();
    state.follow(&model);
    for _ in 0..59 {
        state.on_key(&model, key(KeyCode::Down));
    }
    state.on_key(&model, key(KeyCode::Enter));
    let text = screen(&model, &mut state, 80, 24).join("\n");
    assert!(
        text.contains("slice-59") && text.contains("pid 10"),
        "{text}"
    );
    assert!(!text.contains("slice-00"), "{text}");
    // Back up to the top.
    for _ in 0..59 {
        state.on_key(&model, key(KeyCode::Up));
    }
    let text = screen(&model, &mut state, 80, 24).join("\n");
    assert!(text.contains("slice-00"), "{text}");
}

#[test]
fn any_size_draws_without_panicking() {
    let model = host();
    let mut state = ViewState::default();
    state.follow(&model);
    state.on_key(&model, key(KeyCode::Enter));
    for width in (0..=100).step_by(7).chain([1, 2, 80]) {
        for height in (0..=30).step_by(3).chain([1, 2, 24]) {
            let lines = screen(&model, &mut state, width, height);
            assert_eq!(lines.len(), usize::from(height));
        }
    }
}

#[test]
fn once_is_plain_text_with_every_process() {
    let model = host();
    let text = plain_text(&model, 80);
    assert!(!text.contains('\x1b'), "{text}");
    assert!(text.starts_with("gpuslice top  2023-11-14 22:13:20 UTC  4 slices  2 GPUs\n"));
    assert!(!text.contains("q quit"), "no keys in --once: {text}");
    for needle in [
        "pid 10",
        "pid 20",
        "pid 21",
        "400MiB/1GiB",
        "25%/30%",
        "truncated",
    ] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }
    // Nothing is cut off at the bottom, and no line has trailing blanks.
    assert!(
        text.lines().last().unwrap().contains("a-very-long"),
        "{text}"
    );
    assert!(
        text.lines()
            .all(|l| l == l.trim_end() && l.chars().count() <= 80)
    );
    // Wider, the long name fits whole.
    assert!(plain_text(&model, 120).contains("a-very-long-slice-name-for-the-table"));
}

#[test]
fn notes_are_shown_at_the_bottom() {
    let mut model = host();
    model.notes = vec!["no GPU totals: NVML (libnvidia-ml.so.1): not found".into()];
    let mut state = ViewState::default();
    state.follow(&model);
    let lines = screen(&model, &mut state, 80, 24);
    assert!(lines[23].starts_with("note: no GPU totals"), "{lines:?}");
    assert!(plain_text(&model, 80).trim_end().ends_with("not found"));
}
