//! How `gpuslice top` draws a [`Model`] with ratatui: a title line, the GPUs' totals, one
//! row per slice and GPU (memory as a bar and numbers, compute use against the limit,
//! throttled time, refusals, processes), the processes of the slices that are expanded
//! under them, and the notes. It draws into a ratatui [`Buffer`], the terminal's frame in
//! the live view, or one of its own that [`plain_text`] turns into lines (`--once`). The
//! selection and which slices are expanded are a [`ViewState`], changed by keys
//! ([`ViewState::on_key`]). Every width is worked out from the area, so any size draws
//! (narrow ones cut names short with `…`; ratatui clips what does not fit).

use std::collections::BTreeSet;

use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Row, Table, Widget, Wrap};

use super::model::{Model, bar, compute_of, fit, seconds, size, used_of};

/// Live (a terminal, keys, one slice selected) or `--once` (every slice expanded, no
/// selection, as tall as it needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The live view.
    Live,
    /// One frame as text.
    Once,
}

/// What the keys change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewState {
    /// The selected slice's index in the model.
    pub selected: usize,
    /// The ledgers of the slices whose processes are shown.
    pub expanded: BTreeSet<String>,
    /// The first slice-table row shown (the table scrolls to keep the selection in view).
    pub offset: usize,
    /// The ledger of the selected slice, to find it again in the next model.
    selected_key: Option<String>,
}

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Leave `gpuslice top`.
    Quit,
    /// Draw again.
    Redraw,
    /// Nothing.
    Ignore,
}

impl ViewState {
    /// Follows the selected slice into a new model (by its ledger; if it is gone, the
    /// slice now at its place), and forgets expanded slices that are gone.
    pub fn follow(&mut self, model: &Model) {
        if let Some(i) = self
            .selected_key
            .as_ref()
            .and_then(|k| model.slices.iter().position(|s| &s.key == k))
        {
            self.selected = i;
        }
        self.selected = self.selected.min(model.slices.len().saturating_sub(1));
        self.selected_key = model.slices.get(self.selected).map(|s| s.key.clone());
        self.expanded
            .retain(|k| model.slices.iter().any(|s| &s.key == k));
    }

    /// Handles a key: `q`, Esc or Ctrl-C quit; Up and Down select; Enter shows or hides
    /// the selected slice's processes, Right shows and Left hides them.
    pub fn on_key(&mut self, model: &Model, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::Ignore;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let selected = model.slices.get(self.selected).map(|s| s.key.clone());
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
            KeyCode::Char('c') if ctrl => Action::Quit,
            KeyCode::Up | KeyCode::Char('k') => {
                self.selected = self.selected.saturating_sub(1);
                self.follow_index(model)
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected = (self.selected + 1).min(model.slices.len().saturating_sub(1));
                self.follow_index(model)
            }
            KeyCode::Enter => match selected {
                Some(k) => {
                    if !self.expanded.remove(&k) {
                        self.expanded.insert(k);
                    }
                    Action::Redraw
                }
                None => Action::Ignore,
            },
            KeyCode::Right => match selected {
                Some(k) => {
                    self.expanded.insert(k);
                    Action::Redraw
                }
                None => Action::Ignore,
            },
            KeyCode::Left => match selected {
                Some(k) => {
                    self.expanded.remove(&k);
                    Action::Redraw
                }
                None => Action::Ignore,
            },
            _ => Action::Ignore,
        }
    }

    fn follow_index(&mut self, model: &Model) -> Action {
        self.selected_key = model.slices.get(self.selected).map(|s| s.key.clone());
        Action::Redraw
    }
}

const SPACING: u16 = 1;
// The GPU table: GPU, UUID (the rest), MEMORY, USED/TOTAL, LIMITS, COMPUTE, UTIL.
const GPU_FIXED: [u16; 6] = [3, 10, 14, 7, 7, 4];
// The slice table: SLICE (the rest), GPU, MEMORY, USED/LIMIT, COMPUTE, THROTTLED,
// REFUSED, PROCS.
const SLICE_FIXED: [u16; 7] = [3, 10, 14, 9, 9, 7, 5];

/// The width left for the one column that takes the rest, and the columns' widths.
fn widths(total: u16, fixed: &[u16], rest_first: bool) -> (u16, Vec<Constraint>) {
    // A handful of columns: the count fits a u16 (saturating where it would not).
    let columns = u16::try_from(fixed.len()).unwrap_or(u16::MAX);
    let used: u16 = fixed
        .iter()
        .sum::<u16>()
        .saturating_add(SPACING.saturating_mul(columns));
    let rest = total.saturating_sub(used);
    let mut all: Vec<Constraint> = fixed.iter().map(|&w| Constraint::Length(w)).collect();
    all.insert(usize::from(!rest_first), Constraint::Length(rest));
    (rest, all)
}

fn header(cells: &[&'static str]) -> Row<'static> {
    Row::new(cells.iter().copied()).style(Style::new().add_modifier(Modifier::BOLD))
}

/// The GPUs' rows.
fn gpu_rows(model: &Model, uuid_width: u16) -> Vec<Row<'static>> {
    if model.gpus.is_empty() {
        return vec![Row::new(["-", "no GPUs seen"])];
    }
    let bar_width = usize::from(GPU_FIXED[1]);
    model
        .gpus
        .iter()
        .map(|g| {
            let used = g.memory_used.unwrap_or(0);
            let numbers = match (g.memory_used, g.memory_total) {
                (Some(u), Some(t)) => format!("{}/{}", size(u), size(t)),
                _ => "-".into(),
            };
            Row::new([
                g.index.map(|i| i.to_string()).unwrap_or_else(|| "?".into()),
                fit(&g.uuid, usize::from(uuid_width)),
                if g.memory_used.is_some() {
                    bar(used, g.memory_total, bar_width)
                } else {
                    String::new()
                },
                numbers,
                size(g.slices_memory_limit),
                format!("{}%", g.slices_compute_percent),
                g.utilization_percent
                    .map(|u| format!("{u}%"))
                    .unwrap_or_else(|| "-".into()),
            ])
        })
        .collect()
}

/// The slice table's rows, and each slice's first and last row (its processes
/// included).
fn slice_rows(
    model: &Model,
    view: &ViewState,
    mode: Mode,
    name_width: u16,
) -> (Vec<Row<'static>>, Vec<(usize, usize)>) {
    let name_width = usize::from(name_width);
    let bar_width = usize::from(SLICE_FIXED[1]);
    let mut rows = Vec::new();
    let mut blocks = Vec::new();
    for (i, s) in model.slices.iter().enumerate() {
        let first = rows.len();
        let expanded = mode == Mode::Once || view.expanded.contains(&s.key);
        let marker = match (s.processes.is_empty(), expanded) {
            (true, _) => ' ',
            (false, true) => '-',
            (false, false) => '+',
        };
        let name = format!("{marker}{}", fit(&s.name, name_width.saturating_sub(1)));
        let style = if mode == Mode::Live && i == view.selected {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new()
        };
        if let Some(kind) = &s.failed {
            rows.push(
                Row::new([name.clone(), "-".into(), "FAILED".into(), kind.clone()]).style(style),
            );
        } else if s.devices.is_empty() {
            rows.push(Row::new([name.clone(), "-".into(), "no GPU used yet".into()]).style(style));
        }
        for (j, d) in s.devices.iter().enumerate() {
            rows.push(
                Row::new([
                    if j == 0 { name.clone() } else { String::new() },
                    d.gpu.clone(),
                    bar(d.used, d.limit, bar_width),
                    used_of(d.used, d.limit),
                    compute_of(d.compute_used, d.compute_limit_percent),
                    seconds(d.throttled_seconds),
                    d.refused.to_string(),
                    d.processes.to_string(),
                ])
                .style(style),
            );
        }
        if expanded {
            for p in &s.processes {
                rows.push(Row::new([
                    fit(&format!("  pid {}", p.pid), name_width),
                    p.gpu.clone().unwrap_or_else(|| "-".into()),
                    p.alive.as_str().to_string(),
                    size(p.charged),
                ]));
            }
        }
        blocks.push((first, rows.len().saturating_sub(1).max(first)));
    }
    if model.slices.is_empty() {
        // In place of the table: a line of text (see `render`).
        rows.push(Row::new([String::new()]));
    }
    (rows, blocks)
}

/// The title line.
fn title(model: &Model, mode: Mode) -> String {
    let when = crate::status::format_utc(model.unix);
    let when = match mode {
        // The time of day is enough while it runs.
        Mode::Live => when
            .split_once(' ')
            .map(|(_, t)| t.to_string())
            .unwrap_or(when),
        Mode::Once => when,
    };
    let plural = |n: usize, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
    let mut text = format!(
        "gpuslice top  {when}  {}  {}",
        plural(model.slices.len(), "slice"),
        plural(model.gpus.len(), "GPU")
    );
    if mode == Mode::Live {
        text.push_str("  q quit, Up/Down, Enter: processes");
    }
    text
}

/// The heights of the parts: title, GPUs, gap, slices, notes (written after the frame
/// under `--once`, whole).
fn heights(model: &Model, mode: Mode, slice_rows: usize) -> [u16; 5] {
    let clamp = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
    [
        1,
        clamp(1 + model.gpus.len().max(1)),
        1,
        clamp(1 + slice_rows),
        match mode {
            Mode::Live => clamp(model.notes.len()),
            Mode::Once => 0,
        },
    ]
}

/// Draws `model` into `area` of `buf`.
pub fn render(model: &Model, view: &mut ViewState, mode: Mode, area: Rect, buf: &mut Buffer) {
    let (uuid_width, gpu_widths) = widths(area.width, &GPU_FIXED, false);
    let (name_width, slice_widths) = widths(area.width, &SLICE_FIXED, true);
    let (rows, blocks) = slice_rows(model, view, mode, name_width);
    let [title_h, gpu_h, gap_h, _, notes_h] = heights(model, mode, rows.len());
    let [title_area, gpu_area, _, slice_area, notes_area] = Layout::vertical([
        Constraint::Length(title_h),
        Constraint::Length(gpu_h),
        Constraint::Length(gap_h),
        Constraint::Fill(1),
        Constraint::Length(notes_h),
    ])
    .areas(area);

    Paragraph::new(title(model, mode)).render(title_area, buf);
    Table::new(gpu_rows(model, uuid_width), gpu_widths)
        .header(header(&[
            "GPU",
            "UUID",
            "MEMORY",
            "USED/TOTAL",
            "LIMITS",
            "COMPUTE",
            "UTIL",
        ]))
        .column_spacing(SPACING)
        .render(gpu_area, buf);

    // Scroll so that the selected slice's rows are in view, its first row above all.
    let visible = usize::from(slice_area.height.saturating_sub(1)).max(1);
    if mode == Mode::Live
        && let Some(&(first, last)) = blocks.get(view.selected)
    {
        if first < view.offset {
            view.offset = first;
        } else if last >= view.offset + visible {
            view.offset = (last + 1 - visible).min(first);
        }
    }
    view.offset = view.offset.min(rows.len().saturating_sub(visible));
    let shown: Vec<Row<'static>> = rows.into_iter().skip(view.offset).collect();
    if model.slices.is_empty() {
        Paragraph::new(format!("no slices in {}", model.looked))
            .wrap(Wrap { trim: false })
            .render(slice_area, buf);
    } else {
        Table::new(shown, slice_widths)
            .header(header(&[
                "SLICE",
                "GPU",
                "MEMORY",
                "USED/LIMIT",
                "COMPUTE",
                "THROTTLED",
                "REFUSED",
                "PROCS",
            ]))
            .column_spacing(SPACING)
            .render(slice_area, buf);
    }

    let notes: Vec<Line> = model
        .notes
        .iter()
        .map(|n| Line::from(format!("note: {n}")))
        .collect();
    Paragraph::new(notes).render(notes_area, buf);
}

/// One frame of `model`, `width` columns wide and as tall as it needs (every slice's
/// processes shown), as plain text: no escape codes, no trailing blanks; then the notes,
/// whole.
pub fn plain_text(model: &Model, width: u16) -> String {
    let (name_width, _) = widths(width, &SLICE_FIXED, true);
    let (rows, _) = slice_rows(model, &ViewState::default(), Mode::Once, name_width);
    let height: u16 = heights(model, Mode::Once, rows.len())
        .iter()
        .fold(0u16, |a, &h| a.saturating_add(h));
    let area = Rect::new(0, 0, width, height);
    let mut buf = Buffer::empty(area);
    render(model, &mut ViewState::default(), Mode::Once, area, &mut buf);
    let mut text = buffer_text(&buf);
    for note in &model.notes {
        text.push_str(&format!("note: {note}\n"));
    }
    text
}

/// The text of `buf`, a line per row, trailing blanks cut.
pub fn buffer_text(buf: &Buffer) -> String {
    let area = buf.area;
    let mut out = String::new();
    for y in area.top()..area.bottom() {
        let line: String = (area.left()..area.right())
            .map(|x| buf[(x, y)].symbol())
            .collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
