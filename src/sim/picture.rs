//! [`Picture`]: per-node intervals and marks of one run, drawn as a self-contained SVG.
//!
//! The SVG is written by hand (a few element kinds, no scripts, no external references):
//! a plotting crate would add a dependency for what is a handful of `<rect>`s and `<line>`s.

use std::fmt::Write as _;
use std::time::Duration;

use crate::record::Epoch;

/// Most state changes kept per node; later changes are dropped (and the drop is drawn), so a
/// very long run cannot grow the picture without bound.
const MAX_CHANGES: usize = 20_000;
/// Most promotion and demotion marks kept.
const MAX_MARKS: usize = 10_000;
/// Client writes are counted in this many time buckets per node (a density strip).
const WRITE_BUCKETS: usize = 600;

/// What a node's resource was doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RoleBar {
    /// Acting primary.
    Primary,
    /// Promotion in progress.
    Promoting,
    /// Demotion in progress.
    Demoting,
    /// Replica (following or waiting).
    Replica,
    /// Process paused (the whole machine).
    Paused,
    /// Crashed or shut down.
    Down,
}

impl RoleBar {
    fn colour(self) -> &'static str {
        match self {
            RoleBar::Primary => "#d62728",
            RoleBar::Promoting => "#ff9896",
            RoleBar::Demoting => "#ffbb78",
            RoleBar::Replica => "#9ecae1",
            RoleBar::Paused => "#9467bd",
            RoleBar::Down => "#444444",
        }
    }

    fn label(self) -> &'static str {
        match self {
            RoleBar::Primary => "primary",
            RoleBar::Promoting => "promoting",
            RoleBar::Demoting => "demoting",
            RoleBar::Replica => "replica",
            RoleBar::Paused => "paused",
            RoleBar::Down => "down",
        }
    }
}

/// A node's state at one instant, as far as the picture is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeState {
    /// Resource role or process state.
    pub role: RoleBar,
    /// The node believes it holds a valid lease (under the declared timing).
    pub belief: bool,
    /// The store's leader key names this node.
    pub holds_key: bool,
    /// Cut from the store (either direction).
    pub store_cut: bool,
    /// Some link to or from a peer is cut.
    pub peer_cut: bool,
}

/// A promotion (the resource became primary) or a demotion (it stopped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    /// Simulated time since the start.
    pub at: Duration,
    /// The node.
    pub node: usize,
    /// The epoch promoted under (`None` for a demotion).
    pub epoch: Option<Epoch>,
}

/// Per-node state changes, promotions, demotions and client-write counts of one run, kept
/// with bounded memory. Recorded when the run keeps a timeline (`SimConfig::timeline_rows > 0`).
#[derive(Clone, Debug, Default)]
pub struct Picture {
    end: u64,
    changes: Vec<Vec<(u64, NodeState)>>,
    truncated: Vec<bool>,
    promotions: Vec<Mark>,
    demotions: Vec<Mark>,
    writes: Vec<Vec<u32>>,
}

impl Picture {
    pub(crate) fn new(nodes: usize, end: u64) -> Self {
        Picture {
            end: end.max(1),
            changes: vec![Vec::new(); nodes],
            truncated: vec![false; nodes],
            promotions: Vec::new(),
            demotions: Vec::new(),
            writes: vec![vec![0; WRITE_BUCKETS]; nodes],
        }
    }

    /// Whether anything is recorded (a run without a timeline keeps no picture).
    pub fn is_empty(&self) -> bool {
        self.changes.iter().all(Vec::is_empty)
    }

    /// Records node `n`'s state at `t` if it changed.
    pub(crate) fn state(&mut self, n: usize, t: u64, s: NodeState) {
        let Some(list) = self.changes.get_mut(n) else { return };
        if list.last().is_some_and(|(_, last)| *last == s) {
            return;
        }
        if list.len() >= MAX_CHANGES {
            self.truncated[n] = true;
            return;
        }
        list.push((t, s));
    }

    pub(crate) fn promotion(&mut self, t: u64, node: usize, epoch: Epoch) {
        if self.promotions.len() < MAX_MARKS {
            self.promotions.push(Mark { at: Duration::from_nanos(t), node, epoch: Some(epoch) });
        }
    }

    pub(crate) fn demotion(&mut self, t: u64, node: usize) {
        if self.demotions.len() < MAX_MARKS {
            self.demotions.push(Mark { at: Duration::from_nanos(t), node, epoch: None });
        }
    }

    pub(crate) fn write(&mut self, t: u64, node: usize) {
        // The same bucket as in u128, without its slow division while the product fits.
        let b = match t.checked_mul(WRITE_BUCKETS as u64) {
            Some(scaled) => (scaled / self.end.max(1)) as usize,
            None => ((u128::from(t) * WRITE_BUCKETS as u128) / u128::from(self.end.max(1))) as usize,
        };
        if let Some(c) = self.writes.get_mut(node).and_then(|w| w.get_mut(b.min(WRITE_BUCKETS - 1))) {
            *c = c.saturating_add(1);
        }
    }

    /// Promotions recorded (the resource became primary), in time order.
    pub fn promotions(&self) -> &[Mark] {
        &self.promotions
    }

    /// Demotions recorded (the resource stopped being primary), in time order.
    pub fn demotions(&self) -> &[Mark] {
        &self.demotions
    }

    /// Draws the run: `title` on top, `faults` as labelled ticks on the time axis,
    /// `violations` as red lines.
    pub(crate) fn svg(
        &self,
        title: &str,
        faults: &[(Duration, Option<usize>, String)],
        violations: &[(Duration, Option<usize>, String)],
    ) -> String {
        const LEFT: f64 = 70.0;
        const WIDTH: f64 = 1100.0;
        const TOP: f64 = 40.0;
        const ROW: f64 = 46.0;
        let nodes = self.changes.len();
        let end_s = self.end as f64 / 1e9;
        let x = |t: u64| LEFT + WIDTH * (t as f64 / self.end as f64);
        let xd = |d: Duration| x(d.as_nanos().min(u128::from(u64::MAX)) as u64);
        let axis_y = TOP + ROW * nodes as f64 + 8.0;
        let legend_y = axis_y + 60.0;
        let height = legend_y + 60.0;
        let total_w = LEFT + WIDTH + 30.0;
        let mut o = String::with_capacity(64 * 1024);
        let _ = writeln!(
            o,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total_w:.0}" height="{height:.0}" viewBox="0 0 {total_w:.0} {height:.0}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(o, r#"<rect x="0" y="0" width="{total_w:.0}" height="{height:.0}" fill="white"/>"#);
        let _ = writeln!(o, r#"<text x="{LEFT}" y="20" font-size="13" font-weight="bold">{}</text>"#, escape(title));
        for n in 0..nodes {
            let y0 = TOP + ROW * n as f64;
            let _ = writeln!(o, r#"<g class="node" data-node="{n}">"#);
            let _ = writeln!(o, r#"<text x="8" y="{:.1}" font-size="12">n{n}</text>"#, y0 + 16.0);
            let list = &self.changes[n];
            for (i, (t, s)) in list.iter().enumerate() {
                let t_end = list.get(i + 1).map_or(self.end, |(t, _)| *t);
                if t_end <= *t {
                    continue;
                }
                let (x0, x1) = (x(*t), x(t_end));
                let w = (x1 - x0).max(0.3);
                let _ = writeln!(
                    o,
                    r#"<rect class="role {}" x="{x0:.2}" y="{:.1}" width="{w:.2}" height="16" fill="{}"/>"#,
                    s.role.label(),
                    y0 + 4.0,
                    s.role.colour()
                );
                if s.belief {
                    let _ = writeln!(
                        o,
                        r##"<rect class="belief" x="{x0:.2}" y="{:.1}" width="{w:.2}" height="5" fill="#2ca02c"/>"##,
                        y0 + 21.0
                    );
                }
                if s.holds_key {
                    let _ = writeln!(
                        o,
                        r##"<rect class="key" x="{x0:.2}" y="{:.1}" width="{w:.2}" height="3" fill="#1f77b4"/>"##,
                        y0 + 27.0
                    );
                }
                if s.store_cut {
                    let _ = writeln!(
                        o,
                        r##"<rect class="store-cut" x="{x0:.2}" y="{:.1}" width="{w:.2}" height="5" fill="#7f7f7f"/>"##,
                        y0 + 31.0
                    );
                }
                if s.peer_cut {
                    let _ = writeln!(
                        o,
                        r##"<rect class="peer-cut" x="{x0:.2}" y="{:.1}" width="{w:.2}" height="5" fill="#bcbd22"/>"##,
                        y0 + 36.0
                    );
                }
            }
            if self.truncated[n] {
                let t = list.last().map_or(0, |(t, _)| *t);
                let _ = writeln!(
                    o,
                    r#"<text x="{:.1}" y="{:.1}" fill="red">(later changes not kept)</text>"#,
                    x(t) + 2.0,
                    y0 + 16.0
                );
            }
            // Client writes acknowledged by this node: tick height by count per bucket.
            let max = self.writes[n].iter().copied().max().unwrap_or(0).max(1);
            for (b, c) in self.writes[n].iter().enumerate() {
                if *c == 0 {
                    continue;
                }
                let bx = LEFT + WIDTH * b as f64 / WRITE_BUCKETS as f64;
                let h = 1.0 + 3.0 * f64::from(*c) / f64::from(max);
                let _ = writeln!(
                    o,
                    r##"<rect class="write" x="{bx:.2}" y="{:.1}" width="{:.2}" height="{h:.1}" fill="#000000"/>"##,
                    y0 + 4.0 - h,
                    WIDTH / WRITE_BUCKETS as f64
                );
            }
            let _ = writeln!(o, "</g>");
        }
        for m in &self.promotions {
            let (cx, cy) = (xd(m.at), TOP + ROW * m.node as f64 + 12.0);
            let epoch = m.epoch.map_or(0, |e| e.0);
            let _ = writeln!(
                o,
                r##"<g class="promotion" data-node="{}" data-epoch="{epoch}" data-at-ns="{}"><path d="M{cx:.2},{:.1} l-5,9 h10 z" fill="#000000" stroke="white" stroke-width="0.8"/><title>n{} promoted, epoch {epoch}, {:.3}s</title></g>"##,
                m.node,
                m.at.as_nanos(),
                cy - 10.0,
                m.node,
                m.at.as_secs_f64()
            );
        }
        for m in &self.demotions {
            let (cx, cy) = (xd(m.at), TOP + ROW * m.node as f64 + 12.0);
            let _ = writeln!(
                o,
                r##"<g class="demotion" data-node="{}"><path d="M{cx:.2},{:.1} l-5,-9 h10 z" fill="#ffffff" stroke="#000000" stroke-width="1"/><title>n{} demoted, {:.3}s</title></g>"##,
                m.node,
                cy + 10.0,
                m.node,
                m.at.as_secs_f64()
            );
        }
        for (at, node, what) in violations {
            let vx = xd(*at);
            let (y0, y1) = match node {
                Some(n) => (TOP + ROW * *n as f64, TOP + ROW * (*n as f64 + 1.0)),
                None => (TOP, axis_y),
            };
            let _ = writeln!(
                o,
                r#"<g class="violation"><line x1="{vx:.2}" y1="{y0:.1}" x2="{vx:.2}" y2="{y1:.1}" stroke="red" stroke-width="2"/><title>{}</title></g>"#,
                escape(what)
            );
        }
        // Time axis with about ten labelled ticks, then the faults below it.
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{axis_y:.1}" x2="{:.1}" y2="{axis_y:.1}" stroke="#000000"/>"##,
            LEFT + WIDTH
        );
        let step = nice_step(end_s / 10.0);
        let mut t = 0.0;
        while t <= end_s + 1e-9 {
            let tx = LEFT + WIDTH * t / end_s;
            let _ = writeln!(
                o,
                r##"<line x1="{tx:.2}" y1="{axis_y:.1}" x2="{tx:.2}" y2="{:.1}" stroke="#000000"/><text x="{tx:.2}" y="{:.1}" text-anchor="middle">{t}s</text>"##,
                axis_y + 5.0,
                axis_y + 17.0
            );
            t += step;
        }
        for (i, (at, node, what)) in faults.iter().enumerate() {
            let fx = xd(*at);
            let fy = axis_y + 24.0 + 8.0 * (i % 3) as f64;
            let label = node.map_or_else(|| "*".to_string(), |n| format!("n{n}"));
            let _ = writeln!(
                o,
                r##"<g class="fault"><path d="M{fx:.2},{fy:.1} l-4,7 h8 z" fill="#e377c2"/><text x="{:.2}" y="{:.1}" font-size="9">{label}</text><title>{}</title></g>"##,
                fx + 5.0,
                fy + 7.0,
                escape(what)
            );
        }
        // Legend.
        let mut lx = LEFT;
        let mut item = |o: &mut String, colour: &str, label: &str, h: f64| {
            let _ = writeln!(
                o,
                r#"<rect x="{lx:.1}" y="{:.1}" width="14" height="{h}" fill="{colour}" stroke="black" stroke-width="0.3"/><text x="{:.1}" y="{:.1}">{label}</text>"#,
                legend_y + 10.0 - h,
                lx + 18.0,
                legend_y + 10.0
            );
            lx += 26.0 + 6.5 * label.len() as f64;
        };
        for r in
            [RoleBar::Primary, RoleBar::Promoting, RoleBar::Demoting, RoleBar::Replica, RoleBar::Paused, RoleBar::Down]
        {
            item(&mut o, r.colour(), r.label(), 10.0);
        }
        item(&mut o, "#2ca02c", "lease belief", 5.0);
        item(&mut o, "#1f77b4", "holds store key", 3.0);
        item(&mut o, "#7f7f7f", "cut from store", 5.0);
        item(&mut o, "#bcbd22", "peer link cut", 5.0);
        let ly = legend_y + 28.0;
        let _ = writeln!(
            o,
            r##"<path d="M{LEFT},{:.1} l-5,9 h10 z" fill="#000000"/><text x="{:.1}" y="{:.1}">promotion</text><path d="M{:.1},{:.1} l-5,-9 h10 z" fill="#ffffff" stroke="#000000"/><text x="{:.1}" y="{:.1}">demotion</text><rect x="{:.1}" y="{:.1}" width="6" height="4" fill="#000000"/><text x="{:.1}" y="{:.1}">client writes acknowledged</text><path d="M{:.1},{:.1} l-4,7 h8 z" fill="#e377c2"/><text x="{:.1}" y="{:.1}">fault starts</text><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="red" stroke-width="2"/><text x="{:.1}" y="{:.1}">violation</text>"##,
            ly - 1.0,
            LEFT + 10.0,
            ly + 8.0,
            LEFT + 90.0,
            ly + 9.0,
            LEFT + 100.0,
            ly + 8.0,
            LEFT + 175.0,
            ly + 3.0,
            LEFT + 185.0,
            ly + 8.0,
            LEFT + 360.0,
            ly,
            LEFT + 370.0,
            ly + 8.0,
            LEFT + 450.0,
            ly - 2.0,
            LEFT + 450.0,
            ly + 10.0,
            LEFT + 458.0,
            ly + 8.0
        );
        o.push_str("</svg>\n");
        o
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw.is_nan() || raw <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * p).find(|s| *s >= raw).unwrap_or(10.0 * p)
}

/// Escapes text for SVG content.
fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            _ => o.push(c),
        }
    }
    o
}
