//! `gpuslice status`: reads every slice's ledger on the host (sweeping dead processes
//! unless asked not to) through the host's slice listing (`gpuslice_host::listing`,
//! whose types are re-exported here), and renders it as aligned tables or as one JSON
//! document. A file that cannot be read as a ledger becomes a row with its error; the
//! other slices are still listed.
//!
//! The folder is `--ledger-dir`, else `GPUSLICE_LEDGER_DIR`, else the caller's own
//! per-user folder (`/dev/shm/gpuslice-<uid>`); for root, every user's. A folder's
//! ledgers are read trusting its owner's files (besides root's and the caller's), with
//! the checks of `gpuslice_ledger::folder` otherwise.

use std::path::{Path, PathBuf};

use gpuslice_config::{ENV_LEDGER_DIR, human_size};
use gpuslice_ledger::Owners;
use gpuslice_ledger::folder::{SHM_DIR, USER_DIR_PREFIX, effective_uid};

pub use gpuslice_host::listing::{
    Alive, DeviceStatus, ListingError, Origin, ProcessDevice, ProcessStatus, SliceStatus,
    StatusReport, collect, collect_as, collect_every_user, collect_state_dir, slice_status,
    slice_status_as,
};

use crate::cli::StatusArgs;

/// What can go wrong with `gpuslice status`.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The ledger folder could not be listed.
    #[error(transparent)]
    Listing(#[from] ListingError),
    /// The report could not be turned into JSON.
    #[error("cannot render the status as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The report as one JSON document.
pub fn render_json(report: &StatusReport) -> Result<String, StatusError> {
    Ok(serde_json::to_string_pretty(report)?)
}

/// The host's slices as `gpuslice status` lists them: those of `gpuslice run` (the
/// ledger folder: `ledger_dir`, else `GPUSLICE_LEDGER_DIR`, else the caller's own; for
/// root, every user's), then those of `state_dir`; with where they were looked for (for
/// "no slices in ..."). `gpuslice top` reads the same.
pub fn gather(
    ledger_dir: Option<&Path>,
    state_dir: &Path,
    sweep: bool,
) -> Result<(StatusReport, String), StatusError> {
    let env = std::env::var_os(ENV_LEDGER_DIR).filter(|v| !v.is_empty());
    let (report, dir) = match ledger_dir.map(Path::to_path_buf).or(env.map(PathBuf::from)) {
        Some(dir) => (collect(&dir, sweep)?, dir),
        None if effective_uid() == 0 => (
            collect_every_user(Path::new(SHM_DIR), sweep)?,
            Path::new(SHM_DIR).join(format!("{USER_DIR_PREFIX}*")),
        ),
        None => {
            let dir = gpuslice_ledger::default_ledger_dir();
            (collect_as(&dir, Owners::Mine, sweep)?, dir)
        }
    };
    let report = report.merge(collect_state_dir(state_dir, sweep));
    let looked = format!(
        "{} or {}",
        dir.display(),
        gpuslice_host::layout::slices_dir(state_dir).display()
    );
    Ok((report, looked))
}

/// Runs `gpuslice status`: the slices of `gpuslice run` (the ledger folder), then those
/// of the state folder; returns the text to print.
pub fn status(args: &StatusArgs) -> Result<String, StatusError> {
    let (report, dirs) = gather(args.ledger_dir.as_deref(), &args.state_dir, !args.no_sweep)?;
    if args.json {
        let mut text = render_json(&report)?;
        text.push('\n');
        Ok(text)
    } else {
        Ok(render_table(&report, &dirs))
    }
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_utc(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3_600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Lays out rows in columns; columns listed in `right` are right-aligned.
fn table(rows: &[Vec<String>], right: &[usize], indent: &str) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if right.contains(&c) {
                    format!("{cell:>w$}", w = widths[c])
                } else {
                    format!("{cell:<w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(indent);
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn percent(used: u64, limit: u64) -> String {
    if limit == 0 {
        return "-".into();
    }
    format!("{:.1}%", used as f64 * 100.0 / limit as f64)
}

/// The report as compact aligned tables, one block per slice; `looked` says where slices
/// were looked for (for "no slices in ...").
pub fn render_table(report: &StatusReport, looked: &str) -> String {
    let mut out = String::new();
    for note in &report.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    if report.slices.is_empty() {
        out.push_str(&format!("no slices in {looked}\n"));
        return out;
    }
    for (i, slice) in report.slices.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let created = slice
            .created_unix
            .map(|t| format!("  created {}", format_utc(t)))
            .unwrap_or_default();
        out.push_str(&format!(
            "slice {} ({}){created}  {}\n",
            slice.name,
            slice.origin.as_str(),
            slice.path
        ));
        if let Some(error) = &slice.error {
            out.push_str(&format!("  error: {error}\n"));
            continue;
        }
        if let Some(limit) = slice.default_limit_bytes.filter(|&l| l != u64::MAX) {
            out.push_str(&format!(
                "  limit {} on every GPU it uses\n",
                human_size(limit)
            ));
        }
        if let Some(hard) = slice.compute_percent {
            let burst = slice
                .compute_burst_percent
                .map(|b| format!(", up to {b}% while no other slice wants the GPU"))
                .unwrap_or_default();
            out.push_str(&format!("  compute {hard}% of each GPU{burst}\n"));
        }
        if !slice.devices.is_empty() {
            let mut rows = vec![vec![
                "DEVICE".to_string(),
                "LIMIT".into(),
                "USED".into(),
                "USE%".into(),
                "GPU TIME".into(),
            ]];
            rows.extend(slice.devices.iter().map(|d| {
                let limit = if d.limit_bytes == u64::MAX {
                    "none".to_string()
                } else {
                    human_size(d.limit_bytes)
                };
                vec![
                    d.uuid.clone(),
                    limit,
                    human_size(d.used_bytes),
                    percent(d.used_bytes, d.limit_bytes),
                    format!("{:.1}s", d.busy_ns as f64 / 1e9),
                ]
            }));
            out.push_str(&table(&rows, &[1, 2, 3, 4], "  "));
        }
        if slice.processes.is_empty() {
            out.push_str("  no processes\n");
            continue;
        }
        let mut rows = vec![vec![
            "PID".to_string(),
            "STATE".into(),
            "DEVICE".into(),
            "MEMORY".into(),
            "CONTEXT".into(),
        ]];
        for p in &slice.processes {
            if p.devices.is_empty() {
                rows.push(vec![p.pid.to_string(), p.alive.as_str().into(), "-".into()]);
            }
            for (j, d) in p.devices.iter().enumerate() {
                let (pid, state) = if j == 0 {
                    (p.pid.to_string(), p.alive.as_str().to_string())
                } else {
                    (String::new(), String::new())
                };
                rows.push(vec![
                    pid,
                    state,
                    d.uuid.clone(),
                    human_size(d.charged_bytes),
                    human_size(d.context_bytes),
                ]);
            }
        }
        out.push_str(&table(&rows, &[0, 3, 4], "  "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuslice_ledger::{Ledger, LedgerSpec};

    /// The device entry of the ledger's first GPU.
    const GPU0: gpuslice_ledger::DeviceSlot = gpuslice_ledger::DeviceSlot::new(0);

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    const UUID: &str = "GPU-00000000-0000-4000-8000-000000000000";

    fn make_ledger(dir: &Path, name: &str) -> (Ledger, gpuslice_ledger::ProcessSlot) {
        let ledger = Ledger::create_or_open(
            &dir.join(format!("{name}.ledger")),
            &LedgerSpec {
                name: name.into(),
                default_limit: None,
                devices: vec![(UUID.into(), 4 * GIB)],
                compute: None,
            },
        )
        .unwrap();
        let slot = ledger.register().unwrap();
        ledger.try_charge(slot, GPU0, GIB).unwrap();
        ledger.set_context_bytes(slot, GPU0, 300 * MIB);
        (ledger, slot)
    }

    #[test]
    fn json_shows_devices_and_processes() {
        let dir = tempfile::tempdir().unwrap();
        let (_ledger, _slot) = make_ledger(dir.path(), "train");
        std::fs::write(dir.path().join("bad.ledger"), b"garbage").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"not a ledger name").unwrap();

        let report = collect(dir.path(), true).unwrap();
        let json: serde_json::Value = serde_json::from_str(&render_json(&report).unwrap()).unwrap();
        let slices = json["slices"].as_array().unwrap();
        assert_eq!(slices.len(), 2, "{json}");

        let bad = &slices[0];
        assert_eq!(bad["name"], "bad");
        let error = bad["error"].as_str().unwrap();
        assert!(error.contains("bad.ledger"), "{error}");
        assert_eq!(bad["devices"], serde_json::json!([]));

        let train = &slices[1];
        assert_eq!(train["name"], "train");
        assert_eq!(train["error"], serde_json::Value::Null);
        assert!(train["path"].as_str().unwrap().ends_with("train.ledger"));
        assert!(train["created_unix"].as_u64().unwrap() > 1_600_000_000);
        assert_eq!(train["default_limit_bytes"], serde_json::Value::Null);
        assert_eq!(
            train["devices"],
            serde_json::json!([{"uuid": UUID, "limit_bytes": 4 * GIB, "used_bytes": GIB, "busy_ns": 0, "refused_allocations": 0, "throttled_ns": 0}])
        );
        assert_eq!(
            train["processes"],
            serde_json::json!([{
                "pid": std::process::id(),
                "alive": "alive",
                "devices": [{"uuid": UUID, "charged_bytes": GIB, "context_bytes": 300 * MIB}],
            }])
        );
    }

    #[test]
    fn processes_without_charges_list_no_devices() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, slot) = make_ledger(dir.path(), "s");
        ledger.release(slot, GPU0, GIB);
        let status = slice_status(&dir.path().join("s.ledger"), false);
        assert_eq!(status.processes.len(), 1);
        assert!(status.processes[0].devices.is_empty());
        assert_eq!(status.devices[0].used_bytes, 0);
        ledger.unregister(slot);
        assert!(
            slice_status(&dir.path().join("s.ledger"), true)
                .processes
                .is_empty()
        );
    }

    #[test]
    fn table_lists_limits_usage_and_processes() {
        let dir = tempfile::tempdir().unwrap();
        let (_ledger, _slot) = make_ledger(dir.path(), "train");
        Ledger::create_or_open(
            &dir.path().join("every.ledger"),
            &LedgerSpec {
                name: "every".into(),
                default_limit: Some(8 * GIB),
                devices: Vec::new(),
                compute: None,
            },
        )
        .unwrap();
        let text = render_table(&collect(dir.path(), true).unwrap(), "here");
        assert!(text.contains("slice train (run)  created "), "{text}");
        assert!(text.contains("limit 8GiB on every GPU it uses"), "{text}");
        let device_line = text
            .lines()
            .find(|l| l.contains(UUID) && l.contains("%"))
            .unwrap();
        for cell in ["4GiB", "1GiB", "25.0%"] {
            assert!(device_line.contains(cell), "{device_line}");
        }
        let me = std::process::id().to_string();
        let process_line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&me))
            .unwrap();
        for cell in ["alive", UUID, "1GiB", "300MiB"] {
            assert!(process_line.contains(cell), "{process_line}");
        }
        assert!(text.contains("no processes"), "{text}");
    }

    #[test]
    fn every_users_folder_is_read_trusting_that_user() {
        let base = tempfile::tempdir().unwrap();
        let me = effective_uid();
        // As root, a user's own folder and ledger; otherwise this user's.
        let uid = if me == 0 { 4242 } else { me };
        let dir = base.path().join(format!("gpuslice-{uid}"));
        std::fs::create_dir(&dir).unwrap();
        let (ledger, slot) = make_ledger(&dir, "theirs");
        std::fs::create_dir(base.path().join("gpuslice-gpus")).unwrap();
        if me == 0 {
            for p in [dir.join("theirs.ledger"), dir.clone()] {
                std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
            }
        }
        let report = collect_every_user(base.path(), false).unwrap();
        assert_eq!(report.slices.len(), 1, "{report:?}");
        assert_eq!(report.slices[0].error, None, "{report:?}");
        assert_eq!(report.slices[0].name, "theirs");
        // A folder named after another user than its owner: its ledgers are refused.
        if me == 0 {
            std::fs::rename(&dir, base.path().join("gpuslice-4343")).unwrap();
            let report = collect_every_user(base.path(), false).unwrap();
            let error = report.slices[0].error.clone().unwrap_or_default();
            assert!(error.contains("belongs to user 4242"), "{error}");
        }
        ledger.unregister(slot);
    }

    #[test]
    fn an_empty_or_missing_folder_has_no_slices() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let report = collect(&missing, true).unwrap();
        assert!(report.slices.is_empty());
        assert_eq!(
            render_json(&report)
                .unwrap()
                .replace(char::is_whitespace, ""),
            r#"{"slices":[]}"#
        );
        assert!(render_table(&report, "nowhere").starts_with("no slices in nowhere"));
    }

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn origins_of_state_folder_slices_follow_their_names() {
        assert_eq!(Origin::of_state_slice("gpu0-8g"), Origin::Cdi);
        assert_eq!(
            Origin::of_state_slice("GPU-aaaa1111-0000-4000-8000-000000000000_8g-30-1"),
            Origin::DevicePlugin
        );
        assert_eq!(
            Origin::of_state_slice("0f3c9a2e-1b2c-4d5e-8f90-123456789abc_3fa9"),
            Origin::Dra
        );
        // Near misses are CDI slices of those names.
        for name in [
            "GPU-aaaa_8g-1",
            "GPU-aaaa1111-0000-4000-8000-000000000000_",
            "0f3c9a2e-1b2c-4d5e-8f90-123456789abc_xyz",
            "a_b",
        ] {
            assert_eq!(Origin::of_state_slice(name), Origin::Cdi, "{name}");
        }
    }

    #[test]
    fn the_state_folder_slices_are_listed_with_their_origin() {
        let state = tempfile::tempdir().unwrap();
        let names = [
            "gpu0-8g",
            "GPU-aaaa1111-0000-4000-8000-000000000000_8g-30-0",
            "0f3c9a2e-1b2c-4d5e-8f90-123456789abc_3fa9",
        ];
        let mut ledgers = Vec::new();
        for name in names {
            let dir = state.path().join("slices").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            ledgers.push(
                Ledger::create_or_open(
                    &dir.join("ledger"),
                    &LedgerSpec {
                        name: name.into(),
                        default_limit: None,
                        devices: vec![(UUID.into(), 4 * GIB)],
                        compute: None,
                    },
                )
                .unwrap(),
            );
        }
        // A slice folder whose ledger is missing is listed with its error.
        std::fs::create_dir_all(state.path().join("slices/broken")).unwrap();
        let report = collect_state_dir(state.path(), true);
        assert!(report.notes.is_empty(), "{report:?}");
        let got: Vec<(&str, Origin, bool)> = report
            .slices
            .iter()
            .map(|s| (s.name.as_str(), s.origin, s.error.is_none()))
            .collect();
        assert_eq!(
            got,
            [
                (names[2], Origin::Dra, true),
                (names[1], Origin::DevicePlugin, true),
                ("broken", Origin::Cdi, false),
                (names[0], Origin::Cdi, true),
            ]
        );
        let json = render_json(&report).unwrap();
        assert!(json.contains("\"origin\": \"device-plugin\""), "{json}");
        let table = render_table(&report, "here");
        assert!(table.contains("slice gpu0-8g (cdi)"), "{table}");
        assert!(
            table.contains(&format!("slice {} (dra)", names[2])),
            "{table}"
        );

        // Merged after the run slices; a missing state folder adds nothing.
        let run = tempfile::tempdir().unwrap();
        let (_l, _s) = make_ledger(run.path(), "train");
        let merged = collect(run.path(), true).unwrap().merge(report);
        assert_eq!(merged.slices[0].origin, Origin::Run);
        assert_eq!(merged.slices.len(), 5);
        let none = collect_state_dir(&state.path().join("nope"), true);
        assert_eq!(none, StatusReport::default());

        // A state folder this user cannot list gives a note, not an error.
        if effective_uid() != 0 {
            let slices = state.path().join("slices");
            std::fs::set_permissions(&slices, std::os::unix::fs::PermissionsExt::from_mode(0o000))
                .unwrap();
            let report = collect_state_dir(state.path(), true);
            std::fs::set_permissions(&slices, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .unwrap();
            assert!(report.slices.is_empty());
            assert!(report.notes[0].contains("run as root"), "{report:?}");
            assert!(render_table(&report, "x").starts_with("note: "));
        }
    }
}
