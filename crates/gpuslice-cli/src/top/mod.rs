//! `gpuslice top`: a live terminal view of the host's slices, redrawn from a fresh
//! reading about once a second ([`REFRESH`]): the slice listing `gpuslice status` uses
//! (the same folders and options, read without sweeping: a viewer writes nothing) and
//! the GPUs as NVML reports them (`gpuslice_host::gpus::GpuMeter`, on the fake GPU what
//! it reports). [`model`] turns two readings into what is shown, [`view`] draws it with
//! ratatui; this module owns the terminal (raw mode and the alternate screen, given back
//! on every exit, on SIGTERM, SIGHUP and SIGINT, and, through ratatui's panic hook, on a
//! panic) and the loop of readings and keys. `--once` prints one frame as plain text instead ([`once`]).

pub mod model;
pub mod view;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use gpuslice_host::gpus::GpuMeter;
use gpuslice_host::listing::StatusReport;
use ratatui::crossterm::event::{self, Event};

use crate::status::{StatusError, gather};
use model::{Model, Reading};
use view::{Action, Mode, ViewState};

/// How often the live view reads the host again.
pub const REFRESH: Duration = Duration::from_secs(1);

/// The longest the live view waits for a key before it looks for a signal.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// Flags of `gpuslice top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Print one frame as plain text (no escape codes, every slice's processes shown)
    /// and exit. Compute use is measured over two readings 1 s apart when a slice is
    /// compute-limited (so it takes a second); otherwise its column is "-".
    #[arg(long)]
    pub once: bool,

    /// The width of the --once frame in columns [default: the terminal's, else 80].
    #[arg(long, value_name = "COLUMNS", requires = "once", value_parser = clap::value_parser!(u16).range(20..))]
    pub width: Option<u16>,

    /// Folder that holds the ledgers of `gpuslice run` [default: $GPUSLICE_LEDGER_DIR,
    /// else /dev/shm/gpuslice-<uid>; for root, every user's].
    #[arg(long, value_name = "DIR")]
    pub ledger_dir: Option<PathBuf>,

    /// The state folder of `gpuslice cdi generate` and `gpuslice node`, whose slices
    /// (slices/NAME/ledger) are shown too.
    #[arg(long, value_name = "DIR", default_value = gpuslice_host::layout::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// What can go wrong with `gpuslice top`.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    /// The slices could not be listed (`--once`; the live view shows it as a note).
    #[error(transparent)]
    Listing(#[from] StatusError),
    /// The output is not a terminal.
    #[error("gpuslice top needs a terminal, and its output is not one; --once prints text")]
    NotATerminal,
    /// The terminal could not be set up, read or drawn on.
    #[error("the terminal: {0}")]
    Terminal(#[source] std::io::Error),
    /// The handlers that give the terminal back on SIGTERM, SIGHUP and SIGINT could not
    /// be installed.
    #[error("installing the handlers of SIGTERM, SIGHUP and SIGINT: {0}")]
    Signals(#[source] std::io::Error),
}

/// Where the readings come from: the slice folders and NVML, loaded once.
struct Host<'a> {
    args: &'a TopArgs,
    meter: Result<GpuMeter, String>,
}

impl<'a> Host<'a> {
    fn new(args: &'a TopArgs) -> Self {
        Self {
            args,
            meter: GpuMeter::open().map_err(|e| e.to_string()),
        }
    }

    /// The host now.
    fn read(&self) -> Result<Reading, StatusError> {
        let (report, looked) =
            gather(self.args.ledger_dir.as_deref(), &self.args.state_dir, false)?;
        Ok(self.reading(report, looked))
    }

    /// The host now; a listing that fails is a note.
    fn read_or_note(&self) -> Reading {
        self.read().unwrap_or_else(|e| {
            let report = StatusReport {
                slices: Vec::new(),
                notes: vec![e.to_string()],
            };
            self.reading(report, self.args.state_dir.display().to_string())
        })
    }

    fn reading(&self, report: StatusReport, looked: String) -> Reading {
        let gpus = match &self.meter {
            Ok(m) => m.read().map_err(|e| e.to_string()),
            Err(why) => Err(why.clone()),
        };
        Reading {
            report,
            gpus,
            at: Instant::now(),
            unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            looked,
        }
    }
}

/// `gpuslice top --once`: the text of one frame.
pub fn once(args: &TopArgs) -> Result<String, TopError> {
    let host = Host::new(args);
    let first = host.read()?;
    let model = if Model::any_compute_limit(&first.report) {
        std::thread::sleep(REFRESH);
        Model::build(Some(&first), &host.read()?)
    } else {
        Model::build(None, &first)
    };
    let width = args.width.unwrap_or_else(|| {
        let size = std::io::stdout()
            .is_terminal()
            .then(ratatui::crossterm::terminal::size)
            .and_then(Result::ok);
        size.map(|(w, _)| w).unwrap_or(80)
    });
    Ok(view::plain_text(&model, width))
}

/// Gives the terminal back when dropped (every return of [`live`]; a panic aborts
/// without dropping, and ratatui's panic hook gives it back then).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = ratatui::try_restore();
    }
}

/// `gpuslice top`: the live view, until `q`, Esc or Ctrl-C.
pub fn live(args: &TopArgs) -> Result<(), TopError> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(TopError::NotATerminal);
    }
    let host = Host::new(args);
    // A signal to stop (`kill`, a closed terminal, Ctrl-C outside raw mode) ends the loop
    // like `q`, so that the terminal is given back: the default action would leave it
    // raw and on the alternate screen.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
    ] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(TopError::Signals)?;
    }
    let _restore = Restore;
    let mut terminal = ratatui::try_init().map_err(TopError::Terminal)?;
    let mut state = ViewState::default();
    let mut before: Option<Reading> = None;
    loop {
        let now = host.read_or_note();
        let model = Model::build(before.as_ref(), &now);
        before = Some(now);
        state.follow(&model);
        let deadline = Instant::now() + REFRESH;
        let mut draw = true;
        loop {
            if draw {
                terminal
                    .draw(|frame| {
                        let area = frame.area();
                        view::render(&model, &mut state, Mode::Live, area, frame.buffer_mut());
                    })
                    .map_err(TopError::Terminal)?;
                draw = false;
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if !event::poll(left.min(SIGNAL_POLL)).map_err(TopError::Terminal)? {
                continue;
            }
            match event::read().map_err(TopError::Terminal)? {
                Event::Key(key) => match state.on_key(&model, key) {
                    Action::Quit => return Ok(()),
                    Action::Redraw => draw = true,
                    Action::Ignore => {}
                },
                Event::Resize(..) => draw = true,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
