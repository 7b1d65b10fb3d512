//! SVG charts of a bench results file (`bench/results/h200.json`), drawn
//! with plotters' SVG backend (text goes out as `<text>`: no font is read).
//!
//! - `<name>-<family>.svg`, one per op family (MSA indexer, MSA decode, MSA
//!   prefill, dense prefill, MLA indexer, top-k): for each case, our time
//!   per call and every peer's on a log scale, with ours / best peer;
//! - `<name>-roofline.svg`: the cases whose record has both FLOPs and bytes,
//!   at their arithmetic intensity (FLOP per byte), under the copy bandwidth
//!   and the matmul rates measured with them;
//! - `<name>-limits.svg`: every case's achieved rate as a fraction of its
//!   limit (the copy bandwidth for GB/s, the bf16 or FP8 matmul rate for
//!   TFLOP/s).
//!
//! `<name>` is the results file's stem (`h200`). A case's peer times are its
//! record's `peers` (merged by `bench --peers` in the call that timed ours)
//! or, for a record without them, those of the peer files next to the
//! results (`h200-*peers.json`), which may come from another device call:
//! the charts mark those. A limit a record lacks is taken from the command
//! line, else from the other records of the file, else from the peer files;
//! the charts say which.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::{Map, Value};

pub type Error = Box<dyn std::error::Error + Send + Sync + 'static>;
type Result<T> = std::result::Result<T, Error>;

/// What the records may lack.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// bf16 matmul rate (TFLOP/s) for records that carry none.
    pub bf16_matmul_tflops: Option<f64>,
    /// FP8 matmul rate (TFLOP/s) for records that carry none.
    pub fp8_matmul_tflops: Option<f64>,
    /// Peer files to read; `None`: the `<name>-*peers.json` next to the results.
    pub peer_files: Option<Vec<PathBuf>>,
}

/// One peer's time for a case.
#[derive(Clone, Debug)]
struct Peer {
    name: String,
    us: f64,
    /// The peer file it was read from; `None`: the record's own `peers`.
    file: Option<String>,
}

/// One record of the results file.
#[derive(Clone, Debug)]
struct Case {
    name: String,
    op: String,
    gpu: String,
    date: String,
    our_us: f64,
    achieved: Option<f64>,
    unit: String,
    bytes: Option<f64>,
    flops: Option<f64>,
    logits_us: Option<f64>,
    copy_gbs: Option<f64>,
    bf16: Option<f64>,
    fp8: Option<f64>,
    /// Fastest first.
    peers: Vec<Peer>,
    /// Peers named with no time (not run, or failed).
    no_time: Vec<String>,
}

struct PeerFile {
    name: String,
    map: Map<String, Value>,
}

/// A results file and the peer files read with it.
pub struct Results {
    /// The file stem: the prefix of the chart files.
    pub name: String,
    /// The file name, shown on the charts.
    pub source: String,
    cases: Vec<Case>,
    peer_files: Vec<PeerFile>,
}

/// The peer files next to a results file: `<stem>-*peers.json`, sorted.
pub fn peer_files_next_to(results: &Path) -> Vec<PathBuf> {
    let stem = file_stem(results);
    let dir = match results.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned());
            n.is_some_and(|n| n.starts_with(&format!("{stem}-")) && n.ends_with("peers.json"))
        })
        .collect();
    found.sort();
    found
}

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bench".into())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key)?.as_f64().filter(|x| x.is_finite())
}

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The timed peers of a `{name: µs or null}` object, fastest first, and the
/// names without a time.
fn peers_of(obj: &Map<String, Value>, file: Option<&str>) -> (Vec<Peer>, Vec<String>) {
    let (mut peers, mut no_time) = (Vec::new(), Vec::new());
    for (name, v) in obj {
        match v.as_f64().filter(|x| x.is_finite() && *x > 0.0) {
            Some(us) => peers.push(Peer {
                name: name.clone(),
                us,
                file: file.map(String::from),
            }),
            None => no_time.push(name.clone()),
        }
    }
    peers.sort_by(|a, b| a.us.total_cmp(&b.us));
    (peers, no_time)
}

impl Results {
    /// Reads a results file (a JSON list of bench records) and its peer files.
    pub fn load(path: &Path, opts: &Options) -> Result<Self> {
        let s = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let v: Value =
            serde_json::from_str(&s).map_err(|e| format!("parsing {}: {e}", path.display()))?;
        let records = v.as_array().ok_or_else(|| {
            format!(
                "{}: not a list of bench records (a JSON array)",
                path.display()
            )
        })?;
        let peers = match &opts.peer_files {
            Some(p) => p.clone(),
            None => peer_files_next_to(path),
        };
        Self::from_records(&file_stem(path), &file_name(path), records, &peers)
    }

    /// Records as the bench writes them, and peer files to look cases up in.
    pub fn from_records(
        name: &str,
        source: &str,
        records: &[Value],
        peer_files: &[PathBuf],
    ) -> Result<Self> {
        let mut files = Vec::new();
        for p in peer_files {
            let s =
                std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
            match serde_json::from_str::<Value>(&s) {
                Ok(Value::Object(map)) => files.push(PeerFile {
                    name: file_name(p),
                    map,
                }),
                _ => return Err(format!("{}: not a JSON object of peer times", p.display()).into()),
            }
        }
        let mut cases = Vec::new();
        for r in records {
            let name = text(r, "case");
            let Some(our_us) = num(r, "our_us").filter(|&t| t > 0.0) else {
                return Err(format!("record {name:?} has no our_us").into());
            };
            let (peers, no_time) = match r.get("peers") {
                Some(Value::Object(p)) => peers_of(p, None),
                _ => files
                    .iter()
                    .find_map(|f| match f.map.get(&name) {
                        Some(Value::Object(p)) => Some(peers_of(p, Some(&f.name))),
                        _ => None,
                    })
                    .unwrap_or_default(),
            };
            cases.push(Case {
                op: text(r, "op"),
                gpu: text(r, "gpu"),
                date: text(r, "date"),
                our_us,
                achieved: num(r, "achieved"),
                unit: text(r, "unit"),
                bytes: num(r, "bytes").filter(|&b| b > 0.0),
                flops: num(r, "flops").filter(|&f| f > 0.0),
                logits_us: num(r, "logits_us").filter(|&t| t > 0.0),
                copy_gbs: num(r, "copy_gbs"),
                bf16: num(r, "bf16_matmul_tflops"),
                fp8: num(r, "fp8_matmul_tflops"),
                peers,
                no_time,
                name,
            });
        }
        Ok(Self {
            name: name.to_string(),
            source: source.to_string(),
            cases,
            peer_files: files,
        })
    }

    /// The case names, in the file's order.
    pub fn case_names(&self) -> impl Iterator<Item = &str> {
        self.cases.iter().map(|c| c.name.as_str())
    }

    /// Writes every chart into `dir` (created if need be); returns the files.
    pub fn write(&self, dir: &Path, opts: &Options) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut written = Vec::new();
        for (fam, cases) in self.families() {
            let path = dir.join(format!("{}-{}.svg", self.name, fam.slug));
            self.draw_bars(&fam, &cases, &path)?;
            written.push(path);
        }
        let path = dir.join(format!("{}-roofline.svg", self.name));
        self.draw_roofline(opts, &path)?;
        written.push(path);
        let path = dir.join(format!("{}-limits.svg", self.name));
        self.draw_limits(opts, &path)?;
        written.push(path);
        Ok(written)
    }

    /// The cases by family, families in [`FAMILIES`] order, then unknown ops.
    fn families(&self) -> Vec<(Family, Vec<&Case>)> {
        let mut out: Vec<(Family, Vec<&Case>)> = Vec::new();
        for c in &self.cases {
            let f = family_of(&c.op);
            match out.iter_mut().find(|(g, _)| g.slug == f.slug) {
                Some((_, v)) => v.push(c),
                None => out.push((f, vec![c])),
            }
        }
        out.sort_by_key(|(f, _)| f.order);
        out
    }

    /// A limit for a record that lacks it: the command line's, else the
    /// highest of the other records, else the first peer file's.
    fn fallback_limit(&self, kind: Kind, opts: &Options) -> Option<Limit> {
        if let Some(v) = kind.option(opts) {
            return Some(Limit::from(v, kind.flag()));
        }
        if let Some(v) = self.recorded_max(kind) {
            return Some(Limit::from(v, &format!("other records of {}", self.source)));
        }
        self.peer_file_limit(kind)
    }

    fn recorded_max(&self, kind: Kind) -> Option<f64> {
        self.cases
            .iter()
            .filter_map(|c| kind.of_case(c))
            .max_by(f64::total_cmp)
    }

    fn peer_file_limit(&self, kind: Kind) -> Option<Limit> {
        self.peer_files.iter().find_map(|f| {
            let v = f.map.get(kind.peer_key())?.as_f64()?;
            Some(Limit::from(v, &f.name))
        })
    }

    /// The limit a case's achieved rate is a fraction of.
    fn limit_of(&self, c: &Case, opts: &Options) -> Option<(Kind, Limit)> {
        let kind = Kind::of_unit(&c.unit)?;
        let limit = match kind.of_case(c) {
            Some(v) => Limit {
                value: v,
                from: None,
            },
            None => self.fallback_limit(kind, opts)?,
        };
        Some((kind, limit))
    }

    /// The roof drawn for `kind`: the highest recorded, else the command
    /// line's, else the peer files'.
    fn roof(&self, kind: Kind, opts: &Options) -> Option<Limit> {
        if let Some(v) = self.recorded_max(kind) {
            return Some(Limit {
                value: v,
                from: None,
            });
        }
        if let Some(v) = kind.option(opts) {
            return Some(Limit::from(v, kind.flag()));
        }
        self.peer_file_limit(kind)
    }

    fn gpus_and_dates(&self, cases: &[&Case]) -> String {
        let join = |f: &dyn Fn(&Case) -> &str| {
            let set: BTreeSet<&str> = cases
                .iter()
                .map(|c| f(c))
                .filter(|s| !s.is_empty())
                .collect();
            set.into_iter().collect::<Vec<_>>().join(", ")
        };
        let (g, d) = (join(&|c| &c.gpu), join(&|c| &c.date));
        match (g.is_empty(), d.is_empty()) {
            (false, false) => format!("{g}, {d}"),
            (false, true) => g,
            (true, false) => d,
            (true, true) => "GPU and date not recorded".into(),
        }
    }
}

/// An op family: one bar chart.
#[derive(Clone, Debug)]
struct Family {
    slug: String,
    title: String,
    /// Its compute roof is the FP8 matmul rate (else bf16).
    fp8: bool,
    order: usize,
}

/// (file suffix, title, ops, FP8) of the known families, in chart order
/// (which also picks their colour in the roofline).
const FAMILIES: &[(&str, &str, &[&str], bool)] = &[
    ("msa-indexer", "MSA indexer", &["msa_indexer"], false),
    (
        "msa-decode",
        "MSA decode attention and decode step",
        &["msa_decode_attention", "msa_decode_step"],
        false,
    ),
    (
        "msa-prefill",
        "MSA prefill attention",
        &["msa_prefill_attention", "msa_prefill_attention_query_major"],
        false,
    ),
    ("dense-prefill", "Dense prefill", &["dense_prefill"], false),
    ("mla-indexer", "MLA FP8 indexer", &["mla_indexer"], true),
    ("topk", "Top-k", &["topk"], false),
];

fn family_of(op: &str) -> Family {
    for (i, &(slug, title, ops, fp8)) in FAMILIES.iter().enumerate() {
        if ops.contains(&op) {
            return Family {
                slug: slug.into(),
                title: title.into(),
                fp8,
                order: i,
            };
        }
    }
    let slug = if op.is_empty() { "other" } else { op };
    Family {
        slug: slug.replace(['_', ' ', '/'], "-"),
        title: slug.into(),
        fp8: false,
        order: FAMILIES.len(),
    }
}

/// What a rate is measured against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Copy,
    Bf16,
    Fp8,
}

impl Kind {
    fn of_unit(unit: &str) -> Option<Self> {
        match unit {
            "GB/s" => Some(Self::Copy),
            "TFLOP/s" => Some(Self::Bf16),
            "FP8 TFLOP/s" => Some(Self::Fp8),
            _ => None,
        }
    }
    fn label(self) -> &'static str {
        match self {
            Self::Copy => "copy bandwidth",
            Self::Bf16 => "bf16 matmul",
            Self::Fp8 => "FP8 matmul",
        }
    }
    fn unit(self) -> &'static str {
        match self {
            Self::Copy => "GB/s",
            Self::Bf16 | Self::Fp8 => "TFLOP/s",
        }
    }
    fn of_case(self, c: &Case) -> Option<f64> {
        match self {
            Self::Copy => c.copy_gbs,
            Self::Bf16 => c.bf16,
            Self::Fp8 => c.fp8,
        }
    }
    fn option(self, o: &Options) -> Option<f64> {
        match self {
            Self::Copy => None,
            Self::Bf16 => o.bf16_matmul_tflops,
            Self::Fp8 => o.fp8_matmul_tflops,
        }
    }
    fn flag(self) -> &'static str {
        match self {
            Self::Copy => "the command line",
            Self::Bf16 => "--bf16-matmul-tflops",
            Self::Fp8 => "--fp8-matmul-tflops",
        }
    }
    fn peer_key(self) -> &'static str {
        match self {
            Self::Copy => "_copy_gbs",
            Self::Bf16 => "_bf16_matmul_tflops",
            Self::Fp8 => "_fp8_matmul_tflops",
        }
    }
    fn color(self) -> RGBColor {
        match self {
            Self::Copy => RGBColor(44, 160, 160),
            Self::Bf16 => RGBColor(120, 94, 180),
            Self::Fp8 => RGBColor(214, 96, 77),
        }
    }
}

/// A measured limit, and where it came from when not from the record itself.
#[derive(Clone, Debug, PartialEq)]
struct Limit {
    value: f64,
    from: Option<String>,
}

impl Limit {
    fn from(value: f64, from: &str) -> Self {
        Self {
            value,
            from: Some(from.to_string()),
        }
    }
}

// ---------------------------------------------------------------------------
// drawing helpers
// ---------------------------------------------------------------------------

const WIDTH: u32 = 1100;
const OURS: RGBColor = RGBColor(31, 119, 180);
const BEST: RGBColor = RGBColor(255, 127, 14);
const OTHER: RGBColor = RGBColor(160, 160, 160);
const FASTER: RGBColor = RGBColor(0, 128, 0);
const SLOWER: RGBColor = RGBColor(190, 30, 30);
const INK: RGBColor = RGBColor(30, 30, 30);
const MUTED: RGBColor = RGBColor(90, 90, 90);
const FAMILY_COLORS: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(214, 39, 40),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// A sans-serif font of `px` pixels (plotters writes `size / 1.24` into the SVG).
fn font(px: f64) -> TextStyle<'static> {
    ("sans-serif", px * 1.24).into_font().color(&INK)
}

fn bold(px: f64) -> TextStyle<'static> {
    ("sans-serif", px * 1.24)
        .into_font()
        .style(FontStyle::Bold)
        .color(&INK)
}

/// Estimated width of `s` in pixels (DejaVu Sans averages about 0.6 em).
fn text_w(s: &str, px: f64) -> f64 {
    s.chars().count() as f64 * 0.6 * px
}

/// The same in bold.
fn bold_w(s: &str, px: f64) -> f64 {
    s.chars().count() as f64 * 0.68 * px
}

fn put(
    area: &Area<'_>,
    s: &str,
    (x, y): (i32, i32),
    style: &TextStyle,
    h: HPos,
    v: VPos,
) -> Result<()> {
    area.draw(&Text::new(s.to_string(), (x, y), style.pos(Pos::new(h, v))))?;
    Ok(())
}

/// What a legend entry shows before its label.
#[derive(Clone, Copy)]
enum Swatch {
    /// A filled box (a bar), with its opacity.
    Bar(RGBColor, f64),
    /// A filled marker.
    Dot(RGBColor),
    /// A hollow marker.
    Ring(RGBColor),
    /// A line.
    Line(RGBColor),
}

/// A row of legend entries from `(x, y)`.
fn legend(area: &Area<'_>, (x, y): (i32, i32), items: &[(Swatch, String)]) -> Result<()> {
    let mut x = x;
    for (swatch, label) in items {
        match *swatch {
            Swatch::Bar(c, alpha) => area.draw(&Rectangle::new(
                [(x, y - 6), (x + 16, y + 6)],
                c.mix(alpha).filled(),
            ))?,
            Swatch::Dot(c) => area.draw(&Circle::new((x + 8, y), 5, c.filled()))?,
            Swatch::Ring(c) => area.draw(&Circle::new((x + 8, y), 5, c.stroke_width(2)))?,
            Swatch::Line(c) => area.draw(&PathElement::new(
                vec![(x, y), (x + 16, y)],
                c.stroke_width(2),
            ))?,
        }
        put(
            area,
            label,
            (x + 22, y),
            &font(12.0),
            HPos::Left,
            VPos::Center,
        )?;
        x += 22 + text_w(label, 12.0) as i32 + 24;
    }
    Ok(())
}

/// Microseconds with 3 significant digits or more.
fn fmt_us(us: f64) -> String {
    if us >= 100.0 {
        format!("{us:.0} µs")
    } else if us >= 10.0 {
        format!("{us:.1} µs")
    } else {
        format!("{us:.2} µs")
    }
}

/// Labels of a log axis from `lo` to `hi`: at the powers of ten when it
/// spans more than 3 decades, else also at 2 and 5 times them, else at
/// every key point (plotters puts them at 1 to 9 times the powers of ten).
fn log_ticks(lo: f64, hi: f64) -> impl Fn(&f64) -> String {
    let decades = (hi / lo).log10();
    let keep: &'static [u32] = if decades > 3.0 {
        &[1]
    } else if decades > 1.2 {
        &[1, 2, 5]
    } else {
        &[1, 2, 3, 4, 5, 6, 7, 8, 9]
    };
    // plotters may give a power of ten twice (as 10 × 10^k and as 10^(k+1)).
    let last = std::cell::Cell::new(f64::NAN);
    move |v: &f64| {
        let m = (v / 10f64.powf(v.log10().floor())).round() as u32;
        let again = ((v - last.get()) / v).abs() < 1e-9;
        last.set(*v);
        if keep.contains(&m) && !again {
            fmt_tick(*v)
        } else {
            String::new()
        }
    }
}

/// A tick value: 1, 10, 100, 1 000, 10 000 …
fn fmt_tick(v: f64) -> String {
    if v < 1.0 {
        // 0.1, 0.02 …, without the binary noise of 10^-k.
        let s = format!("{v:.6}");
        return s.trim_end_matches('0').to_string();
    }
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push('\u{2009}');
        }
        out.push(ch);
    }
    out
}

fn fmt_rate(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn log10_floor(v: f64, step: f64) -> f64 {
    10f64.powf((v.log10() / step).floor() * step)
}

fn log10_ceil(v: f64, step: f64) -> f64 {
    10f64.powf((v.log10() / step).ceil() * step)
}

/// Footnote lines from `y` down.
fn footnotes(area: &Area<'_>, y: i32, lines: &[String]) -> Result<()> {
    for (i, l) in lines.iter().enumerate() {
        put(
            area,
            l,
            (16, y + 16 * i as i32),
            &font(11.5).color(&MUTED),
            HPos::Left,
            VPos::Center,
        )?;
    }
    Ok(())
}

/// Splits text at spaces into lines of at most `max` characters.
fn wrap(s: &str, max: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in s.split(' ') {
        let last = lines.last_mut().unwrap();
        if !last.is_empty() && last.chars().count() + 1 + word.chars().count() > max {
            lines.push(word.to_string());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

fn wrap_all(notes: &[String]) -> Vec<String> {
    notes.iter().flat_map(|n| wrap(n, 170)).collect()
}

// ---------------------------------------------------------------------------
// the page every chart shares
// ---------------------------------------------------------------------------

/// Height of the title, subtitle and legend band.
const TOP_H: f64 = 92.0;
/// Height of the x axis' labels and description.
const AXIS_H: f64 = 48.0;

/// A chart's page: the title, a line naming the GPU, the date and the data
/// file, a legend row, `plot_h` pixels for the plot (axes included), then
/// the footnotes. Returns the page and its plot area.
fn page<'a>(
    path: &'a Path,
    title: &str,
    subtitle: &str,
    legend_items: &[(Swatch, String)],
    plot_h: f64,
    notes: &[String],
) -> Result<(Area<'a>, Area<'a>)> {
    let notes = wrap_all(notes);
    let height = (TOP_H + plot_h + 14.0 + 16.0 * notes.len() as f64).ceil() as u32;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    put(
        &root,
        title,
        (16, 24),
        &bold(18.0),
        HPos::Left,
        VPos::Center,
    )?;
    let muted = font(13.0).color(&MUTED);
    put(&root, subtitle, (16, 48), &muted, HPos::Left, VPos::Center)?;
    legend(&root, (16, 74), legend_items)?;
    footnotes(&root, (TOP_H + plot_h + 10.0) as i32, &notes)?;
    let (_, rest) = root.split_vertically(TOP_H as i32);
    let (plot, _) = rest.split_vertically(plot_h as i32);
    Ok((root, plot))
}

/// A pixel box around `(x, y)`.
fn around((x, y): (i32, i32), r: f64) -> Box2 {
    (x as f64 - r, y as f64 - r, x as f64 + r, y as f64 + r)
}

// ---------------------------------------------------------------------------
// bar chart: ours and the peers, per case
// ---------------------------------------------------------------------------

const LABEL_PX: f64 = 12.0;
const NAME_PX: f64 = 13.0;

#[derive(Clone, Copy, PartialEq)]
enum BarKind {
    Ours,
    Best,
    Other,
}

struct Bar {
    /// Centre, in bar slots from the top.
    slot: f64,
    us: f64,
    label: String,
    kind: BarKind,
    from_file: bool,
}

/// A case's name left of its first bar, ours / best peer under it.
struct Head<'a> {
    name: &'a str,
    slot: f64,
    speedup: Option<f64>,
}

/// The bars of the cases, ours then the peers fastest first, a gap between
/// cases; and the slots they take.
fn bar_rows<'a>(cases: &[&'a Case]) -> (Vec<Bar>, Vec<Head<'a>>, f64) {
    const GAP: f64 = 0.7; // slots between cases
    let (mut bars, mut heads, mut slot) = (Vec::new(), Vec::new(), 0.0);
    for (i, c) in cases.iter().enumerate() {
        if i > 0 {
            slot += GAP;
        }
        heads.push(Head {
            name: &c.name,
            slot: slot + 0.5,
            speedup: c.peers.first().map(|p| p.us / c.our_us),
        });
        bars.push(Bar {
            slot: slot + 0.5,
            us: c.our_us,
            label: format!("ours {}", fmt_us(c.our_us)),
            kind: BarKind::Ours,
            from_file: false,
        });
        slot += 1.0;
        for (j, p) in c.peers.iter().enumerate() {
            let star = if p.file.is_some() { " *" } else { "" };
            bars.push(Bar {
                slot: slot + 0.5,
                us: p.us,
                label: format!("{}{star} {}", p.name, fmt_us(p.us)),
                kind: if j == 0 {
                    BarKind::Best
                } else {
                    BarKind::Other
                },
                from_file: p.file.is_some(),
            });
            slot += 1.0;
        }
    }
    (bars, heads, slot)
}

fn speedup_text(s: f64) -> String {
    if s >= 10.0 {
        format!("{s:.1}× vs best peer")
    } else {
        format!("{s:.2}× vs best peer")
    }
}

/// The time axis: from half a decade under the fastest bar to where every
/// bar's label still fits right of it in `plot_w` pixels.
fn time_range(bars: &[Bar], plot_w: f64) -> (f64, f64) {
    let min_us = bars.iter().map(|b| b.us).fold(f64::INFINITY, f64::min);
    let lo = log10_floor(min_us / 1.3, 0.5);
    let decades = bars
        .iter()
        .map(|b| {
            let room = plot_w - (text_w(&b.label, LABEL_PX) + 10.0);
            plot_w * (b.us / lo).log10() / room.max(plot_w * 0.2)
        })
        .fold(0.0, f64::max);
    (lo, lo * 10f64.powf(decades.max(1.0)))
}

impl Results {
    /// The footnotes and legend of a family's bar chart.
    fn bar_notes(&self, cases: &[&Case]) -> (Vec<String>, Vec<(Swatch, String)>) {
        let files: BTreeSet<&str> = cases
            .iter()
            .flat_map(|c| c.peers.iter().filter_map(|p| p.file.as_deref()))
            .collect();
        let no_time: BTreeSet<&str> = cases
            .iter()
            .flat_map(|c| c.no_time.iter().map(String::as_str))
            .collect();
        let any_peer = cases.iter().any(|c| !c.peers.is_empty());
        let list = |s: &BTreeSet<&str>| s.iter().copied().collect::<Vec<_>>().join(", ");
        let mut notes = vec![format!(
            "Time per call: calls enqueued back to back between two CUDA events, median of 5 batches, eager (no graph replay), ours and the peers alike. \
             × = best peer's time / ours (above 1: we are faster). Data: {}.",
            self.source
        )];
        let mut items = vec![(Swatch::Bar(OURS, 1.0), "ours".to_string())];
        if any_peer {
            items.push((Swatch::Bar(BEST, 1.0), "best peer (fastest)".into()));
            items.push((Swatch::Bar(OTHER, 1.0), "other peers".into()));
        } else {
            notes.push("No peer time for these cases in the data.".into());
        }
        if !files.is_empty() {
            notes.push(format!(
                "* read from {} next to {}: not stored with our record, so possibly timed in another device call than ours.",
                list(&files),
                self.source
            ));
            let label = "* peer from a peer file (paler)";
            items.push((Swatch::Bar(OTHER, 0.45), label.into()));
        }
        if !no_time.is_empty() {
            notes.push(format!(
                "Peers in the data without a time (not run or failed): {}.",
                list(&no_time)
            ));
        }
        (notes, items)
    }

    fn draw_bars(&self, fam: &Family, cases: &[&Case], path: &Path) -> Result<()> {
        const SLOT: f64 = 22.0; // pixels a bar
        let (bars, heads, total) = bar_rows(cases);
        let left_w = heads
            .iter()
            .map(|h| {
                let s = h
                    .speedup
                    .map_or(0.0, |s| text_w(&speedup_text(s), LABEL_PX));
                bold_w(h.name, NAME_PX).max(s)
            })
            .fold(0.0, f64::max)
            + 24.0;
        let (lo, hi) = time_range(&bars, WIDTH as f64 - left_w - 28.0);
        let (notes, items) = self.bar_notes(cases);
        let (root, plot) = page(
            path,
            &format!("{}: time per call, ours and peers", fam.title),
            &format!("{} ({})", self.gpus_and_dates(cases), self.source),
            &items,
            total * SLOT + 12.0 + AXIS_H,
            &notes,
        )?;
        let mut chart = ChartBuilder::on(&plot)
            .margin_left(8)
            .margin_right(20)
            .margin_top(4)
            .x_label_area_size(AXIS_H as i32)
            .y_label_area_size(left_w as i32)
            .build_cartesian_2d((lo..hi).log_scale(), 0.0..total + 0.3)?;
        let fmt = log_ticks(lo, hi);
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_desc("time per call, µs (log scale; shorter is faster)")
            .x_label_formatter(&fmt)
            .label_style(font(12.0))
            .axis_desc_style(font(13.0))
            .bold_line_style(RGBColor(222, 222, 222))
            .light_line_style(TRANSPARENT)
            .draw()?;
        let y_of = |slot: f64| total + 0.15 - slot;
        for b in &bars {
            let color = match b.kind {
                BarKind::Ours => OURS,
                BarKind::Best => BEST,
                BarKind::Other => OTHER,
            };
            let alpha = if b.from_file { 0.45 } else { 1.0 };
            let y = y_of(b.slot);
            let style = font(LABEL_PX).pos(Pos::new(HPos::Left, VPos::Center));
            chart.draw_series([Rectangle::new(
                [(lo, y - 0.36), (b.us, y + 0.36)],
                color.mix(alpha).filled(),
            )])?;
            chart.draw_series([
                EmptyElement::at((b.us, y)) + Text::new(b.label.clone(), (6, 0), style)
            ])?;
        }
        for h in &heads {
            let (px, py) = chart.backend_coord(&(lo, y_of(h.slot)));
            let name = bold(NAME_PX);
            put(
                &root,
                h.name,
                (px - 10, py),
                &name,
                HPos::Right,
                VPos::Center,
            )?;
            if let Some(s) = h.speedup {
                let style = font(LABEL_PX).color(if s >= 1.0 { &FASTER } else { &SLOWER });
                let (_, py) = chart.backend_coord(&(lo, y_of(h.slot + 1.0)));
                let at = (px - 10, py);
                put(
                    &root,
                    &speedup_text(s),
                    at,
                    &style,
                    HPos::Right,
                    VPos::Center,
                )?;
            }
        }
        root.present()?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// roofline
// ---------------------------------------------------------------------------

struct Point<'a> {
    case: &'a Case,
    family: String,
    fp8: bool,
    color: RGBColor,
    /// FLOP per byte.
    ai: f64,
    /// End to end.
    tflops: f64,
    /// The logits kernel alone, where the record has its time.
    logits_tflops: Option<f64>,
}

/// What a roofline draws: the points and the roofs over them.
struct Roofline<'a> {
    points: Vec<Point<'a>>,
    copy: Option<Limit>,
    /// The compute roofs of the points' precisions.
    roofs: Vec<(Kind, Limit)>,
}

impl Roofline<'_> {
    /// TFLOP/s per FLOP/byte under the copy bandwidth (GB/s × FLOP/B = GFLOP/s).
    fn slope(&self) -> Option<f64> {
        self.copy.as_ref().map(|c| c.value / 1e3)
    }

    /// Log ranges holding every point and each compute roof's ridge.
    fn ranges(&self) -> ((f64, f64), (f64, f64)) {
        let mut xs: Vec<f64> = self.points.iter().map(|p| p.ai).collect();
        let mut ys: Vec<f64> = self
            .points
            .iter()
            .flat_map(|p| [Some(p.tflops), p.logits_tflops])
            .flatten()
            .collect();
        for (_, r) in &self.roofs {
            ys.push(r.value);
            xs.extend(self.slope().map(|s| r.value / s));
        }
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        if xs.is_empty() || ys.is_empty() {
            return ((1.0, 1e4), (1.0, 1e3));
        }
        (
            (
                log10_floor(min(&xs) / 2.0, 1.0),
                log10_ceil(max(&xs) * 3.0, 1.0),
            ),
            (
                log10_floor(min(&ys) / 1.5, 1.0),
                log10_ceil(max(&ys) * 1.6, 0.5),
            ),
        )
    }
}

/// A pixel-space log-log chart of the roofline.
type LogLog<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<LogCoord<f64>, LogCoord<f64>>>;

impl Results {
    fn roofline(&self, opts: &Options) -> Roofline<'_> {
        let mut points = Vec::new();
        for (fam, cases) in self.families() {
            for c in cases {
                let (Some(f), Some(b)) = (c.flops, c.bytes) else {
                    continue;
                };
                points.push(Point {
                    case: c,
                    family: fam.title.clone(),
                    fp8: fam.fp8,
                    color: FAMILY_COLORS[fam.order.min(FAMILY_COLORS.len() - 1)],
                    ai: f / b,
                    tflops: f / (c.our_us * 1e-6) / 1e12,
                    logits_tflops: c.logits_us.map(|t| f / (t * 1e-6) / 1e12),
                });
            }
        }
        let roofs = [(Kind::Bf16, false), (Kind::Fp8, true)]
            .into_iter()
            .filter(|&(_, fp8)| points.iter().any(|p| p.fp8 == fp8))
            .filter_map(|(kind, _)| Some((kind, self.roof(kind, opts)?)))
            .collect();
        Roofline {
            copy: self.roof(Kind::Copy, opts),
            points,
            roofs,
        }
    }

    fn roofline_notes(&self, r: &Roofline) -> Vec<String> {
        let mut notes = vec![format!(
            "Points: the cases whose record has both FLOPs and bytes; x = FLOPs / bytes, y = FLOPs / time per call (eager), end to end (filled). \
             Hollow: the logits kernel alone (the same FLOPs over logits_us), where the record has its time. Data: {}.",
            self.source
        )];
        let mut roofs = Vec::new();
        if let Some(c) = &r.copy {
            let (lo, hi) = self
                .cases
                .iter()
                .filter_map(|c| c.copy_gbs)
                .fold((f64::INFINITY, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
            let what = "1 GiB device-to-device copy, read + write";
            roofs.push(match &c.from {
                None if hi - lo > 0.5 => format!(
                    "copy bandwidth {:.0} GB/s ({what}; {lo:.0}–{hi:.0} GB/s in the runs of these records; the highest drawn)",
                    c.value
                ),
                None => format!("copy bandwidth {:.0} GB/s ({what}, same run)", c.value),
                Some(f) => format!("copy bandwidth {:.0} GB/s from {f}", c.value),
            });
        }
        for (kind, l) in &r.roofs {
            let carry = self
                .cases
                .iter()
                .filter(|c| kind.of_case(c).is_some())
                .count();
            roofs.push(match &l.from {
                None => format!(
                    "{} {:.0} TFLOP/s (8192³ in PyTorch; the highest in the records, {carry} of which carry one)",
                    kind.label(),
                    l.value,
                ),
                Some(f) => format!(
                    "{} {:.0} TFLOP/s † from {f} (no record has one, so not measured in the calls that timed these cases)",
                    kind.label(),
                    l.value
                ),
            });
        }
        if !roofs.is_empty() {
            notes.push(format!("Roofs: {}.", roofs.join("; ")));
        }
        let without = self
            .cases
            .iter()
            .filter(|c| c.flops.is_none() || c.bytes.is_none())
            .count();
        if without > 0 {
            notes.push(format!(
                "Not placed (their record has FLOPs or bytes, not both): {without} {}; their fraction of the limit is in {}-limits.svg.",
                if without == 1 { "case" } else { "cases" },
                self.name
            ));
        }
        notes
    }

    fn draw_roofline(&self, opts: &Options, path: &Path) -> Result<()> {
        let r = self.roofline(opts);
        let ((x_lo, x_hi), (y_lo, y_hi)) = r.ranges();
        // Legend: the families with points, the hollow marker, the roofs.
        let mut items: Vec<(Swatch, String)> = Vec::new();
        for p in &r.points {
            if !items.iter().any(|(_, t)| *t == p.family) {
                items.push((Swatch::Dot(p.color), p.family.clone()));
            }
        }
        if r.points.iter().any(|p| p.logits_tflops.is_some()) {
            items.push((Swatch::Ring(MUTED), "logits kernel alone".into()));
        }
        items.push((Swatch::Line(INK), "roof (measured limit)".into()));
        let all: Vec<&Case> = self.cases.iter().collect();
        let (root, plot) = page(
            path,
            "Roofline: achieved rate against the measured limits",
            &format!("{} ({})", self.gpus_and_dates(&all), self.source),
            &items,
            620.0,
            &self.roofline_notes(&r),
        )?;
        let mut chart = ChartBuilder::on(&plot)
            .margin_left(8)
            .margin_right(24)
            .margin_top(8)
            .x_label_area_size(AXIS_H as i32)
            .y_label_area_size(72)
            .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())?;
        let (fmt_x, fmt_y) = (log_ticks(x_lo, x_hi), log_ticks(y_lo, y_hi));
        chart
            .configure_mesh()
            .x_desc("arithmetic intensity, FLOP per byte (log scale)")
            .y_desc("TFLOP/s (log scale)")
            .x_label_formatter(&fmt_x)
            .y_label_formatter(&fmt_y)
            .label_style(font(12.0))
            .axis_desc_style(font(13.0))
            .bold_line_style(RGBColor(205, 205, 205))
            .light_line_style(RGBColor(240, 240, 240))
            .draw()?;
        let mut taken = Vec::new();
        draw_roofs(&mut chart, &root, &r, &mut taken)?;
        draw_points(&mut chart, &root, &r.points, &mut taken)?;
        if r.points.is_empty() {
            let (px, py) = chart.backend_coord(&(x_lo, y_hi));
            let text = "no record has both FLOPs and bytes";
            put(
                &root,
                text,
                (px + 20, py + 30),
                &font(14.0),
                HPos::Left,
                VPos::Center,
            )?;
        }
        root.present()?;
        Ok(())
    }
}

/// The bandwidth slope up to the highest ridge, each compute roof flat from
/// its ridge (FP8 dashed), and their labels; the pixels they cover go into
/// `taken`.
fn draw_roofs(chart: &mut LogLog, root: &Area, r: &Roofline, taken: &mut Vec<Box2>) -> Result<()> {
    let (x_range, y_range) = (chart.x_range(), chart.y_range());
    let (x_lo, x_hi, y_lo, y_hi) = (x_range.start, x_range.end, y_range.start, y_range.end);
    if let (Some(s), Some(copy)) = (r.slope(), &r.copy) {
        let top = r.roofs.iter().map(|(_, l)| l.value).fold(y_hi, f64::min);
        let (x0, x1) = (x_lo.max(y_lo / s), (top / s).min(x_hi));
        if x1 > x0 {
            chart.draw_series(LineSeries::new(
                [(x0, x0 * s), (x1, x1 * s)],
                INK.stroke_width(2),
            ))?;
            let (a, b) = (
                chart.backend_coord(&(x0, x0 * s)),
                chart.backend_coord(&(x1, x1 * s)),
            );
            for i in 0..=100 {
                let t = i as f64 / 100.0;
                let at = (
                    a.0 + ((b.0 - a.0) as f64 * t) as i32,
                    a.1 + ((b.1 - a.1) as f64 * t) as i32,
                );
                taken.push(around(at, 2.0));
            }
            // The label above the slope and left of it, two thirds of the way up.
            let xl = x0 * (x1 / x0).powf(0.7);
            let (px, py) = chart.backend_coord(&(xl, xl * s));
            let label = format!("copy bandwidth {:.0} GB/s", copy.value);
            put(
                root,
                &label,
                (px - 10, py - 6),
                &font(12.0),
                HPos::Right,
                VPos::Bottom,
            )?;
            let (x, y) = (px as f64 - 10.0, py as f64 - 6.0);
            taken.push((x - text_w(&label, 12.0), y - 16.0, x, y));
        }
    }
    for (kind, l) in &r.roofs {
        let ridge = r.slope().map_or(x_lo, |s| (l.value / s).max(x_lo));
        let line = [(ridge, l.value), (x_hi, l.value)];
        if *kind == Kind::Fp8 {
            chart.draw_series(DashedLineSeries::new(line, 8, 5, INK.stroke_width(2)))?;
        } else {
            chart.draw_series(LineSeries::new(line, INK.stroke_width(2)))?;
        }
        let (px, py) = chart.backend_coord(&(x_hi, l.value));
        let (rx, _) = chart.backend_coord(&(ridge, l.value));
        taken.push((rx as f64, py as f64 - 2.0, px as f64, py as f64 + 2.0));
        let dagger = if l.from.is_some() { " †" } else { "" };
        let label = format!("{} {:.0} TFLOP/s{dagger}", kind.label(), l.value);
        put(
            root,
            &label,
            (px - 6, py - 5),
            &font(12.0),
            HPos::Right,
            VPos::Bottom,
        )?;
        let (x, y) = (px as f64 - 6.0, py as f64 - 5.0);
        taken.push((x - text_w(&label, 12.0), y - 16.0, x, y));
    }
    Ok(())
}

/// The points (filled end to end, hollow for the logits kernel alone), then
/// their labels where they overlap nothing drawn.
fn draw_points(
    chart: &mut LogLog,
    root: &Area,
    points: &[Point],
    taken: &mut Vec<Box2>,
) -> Result<()> {
    let mut labels = Vec::new();
    for p in points {
        chart.draw_series([Circle::new((p.ai, p.tflops), 5, p.color.filled())])?;
        let at = chart.backend_coord(&(p.ai, p.tflops));
        taken.push(around(at, 6.0));
        labels.push((at, p.case.name.clone(), p.color));
        if let Some(lt) = p.logits_tflops {
            chart.draw_series([Circle::new((p.ai, lt), 6, p.color.stroke_width(2))])?;
            let at = chart.backend_coord(&(p.ai, lt));
            taken.push(around(at, 6.0));
            labels.push((at, format!("{} (logits)", p.case.name), p.color));
        }
    }
    let (x_range, y_range) = (chart.x_range(), chart.y_range());
    let (x0, y0) = chart.backend_coord(&(x_range.start, y_range.end));
    let (x1, y1) = chart.backend_coord(&(x_range.end, y_range.start));
    let bounds = (
        x0 as f64 + 2.0,
        y0 as f64 + 2.0,
        x1 as f64 - 2.0,
        y1 as f64 - 2.0,
    );
    for ((x, y), label, color) in labels {
        let w = text_w(&label, 12.0);
        let (pos, h) = place((x as f64, y as f64), w, 15.0, taken, bounds);
        put(
            root,
            &label,
            pos,
            &font(12.0).color(&color),
            h,
            VPos::Center,
        )?;
    }
    Ok(())
}

/// A label box in pixels: (x0, y0, x1, y1).
type Box2 = (f64, f64, f64, f64);

fn overlaps(a: Box2, b: Box2) -> bool {
    a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3
}

/// Places a label of width `w` near the point `(x, y)` where it overlaps
/// none of `taken` and stays inside `bounds` (else right of the point);
/// returns its anchor point and horizontal alignment.
fn place(
    (x, y): (f64, f64),
    w: f64,
    h: f64,
    taken: &mut Vec<Box2>,
    bounds: Box2,
) -> ((i32, i32), HPos) {
    // (dx, dy, text starts at the anchor)
    let offsets = [
        (9.0, 0.0, true),
        (-9.0, 0.0, false),
        (7.0, -13.0, true),
        (7.0, 13.0, true),
        (-7.0, -13.0, false),
        (-7.0, 13.0, false),
        (7.0, -26.0, true),
        (7.0, 26.0, true),
        (-7.0, -26.0, false),
        (-7.0, 26.0, false),
    ];
    let boxed = |(dx, dy, left): (f64, f64, bool)| {
        let x0 = if left { x + dx } else { x + dx - w };
        (x0, y + dy - h / 2.0, x0 + w, y + dy + h / 2.0)
    };
    let fits = |b: Box2| b.0 >= bounds.0 && b.2 <= bounds.2 && b.1 >= bounds.1 && b.3 <= bounds.3;
    let pick = offsets
        .iter()
        .copied()
        .find(|&o| fits(boxed(o)) && !taken.iter().any(|&t| overlaps(boxed(o), t)))
        .unwrap_or(offsets[0]);
    taken.push(boxed(pick));
    let h_pos = if pick.2 { HPos::Left } else { HPos::Right };
    (((x + pick.0) as i32, (y + pick.1) as i32), h_pos)
}

// ---------------------------------------------------------------------------
// fraction of the limit
// ---------------------------------------------------------------------------

/// A case's row in the limits chart.
struct LimitRow<'a> {
    slot: f64,
    case: &'a Case,
    limit: Option<(Kind, Limit)>,
}

impl LimitRow<'_> {
    fn fraction(&self) -> Option<f64> {
        let (_, l) = self.limit.as_ref()?;
        Some(self.case.achieved? / l.value)
    }

    /// "97%: 4095 of 4240 GB/s", † where the limit is not the record's own.
    fn label(&self, f: f64, kind: Kind, l: &Limit) -> String {
        let pct = if f < 0.1 {
            format!("{:.1}", f * 100.0)
        } else {
            format!("{:.0}", f * 100.0)
        };
        let unit = if kind == Kind::Fp8 {
            "FP8 TFLOP/s"
        } else {
            kind.unit()
        };
        let dagger = if l.from.is_some() { " †" } else { "" };
        let achieved = fmt_rate(self.case.achieved.unwrap_or_default());
        format!("{pct}%: {achieved} of {:.0} {unit}{dagger}", l.value)
    }
}

impl Results {
    /// The rows by family (a header slot each, a little gap after), the
    /// headers, and the slots they take.
    fn limit_rows(&self, opts: &Options) -> (Vec<LimitRow<'_>>, Vec<(String, f64)>, f64) {
        let (mut rows, mut headers, mut slot) = (Vec::new(), Vec::new(), 0.0);
        for (fam, cases) in self.families() {
            headers.push((fam.title, slot + 0.5));
            slot += 1.0;
            for c in cases {
                rows.push(LimitRow {
                    slot: slot + 0.5,
                    case: c,
                    limit: self.limit_of(c, opts),
                });
                slot += 1.0;
            }
            slot += 0.4;
        }
        (rows, headers, slot)
    }

    fn limit_notes(&self, rows: &[LimitRow]) -> Vec<String> {
        let mut notes = vec![format!(
            "Each case's achieved rate (as its record defines it: bytes or FLOPs over the time per call, eager) over the limit measured in the same run: \
             copy bandwidth for GB/s cases (1 GiB device-to-device copy, read + write), the bf16 or FP8 matmul rate (8192³, PyTorch) for TFLOP/s cases. Data: {}.",
            self.source
        )];
        // The limits not measured with their case.
        let mut borrowed: Vec<(Kind, &Limit)> = Vec::new();
        for (k, l) in rows.iter().filter_map(|r| r.limit.as_ref()) {
            if l.from.is_some() && !borrowed.iter().any(|(k2, l2)| k2 == k && *l2 == l) {
                borrowed.push((*k, l));
            }
        }
        for (k, l) in borrowed {
            notes.push(format!(
                "† {} {:.0} {} from {}: the record has none, so this limit was not measured in the call that timed the case.",
                k.label(),
                l.value,
                k.unit(),
                l.from.as_deref().unwrap_or_default()
            ));
        }
        if rows.iter().any(|r| r.limit.is_none()) {
            notes.push(
                "“no limit”: neither the record, the other records, the peer files nor the command line (--bf16-matmul-tflops, --fp8-matmul-tflops) give one."
                    .into(),
            );
        }
        notes
    }

    fn draw_limits(&self, opts: &Options, path: &Path) -> Result<()> {
        const SLOT: f64 = 21.0; // pixels a row
        let (rows, headers, total) = self.limit_rows(opts);
        let xmax = rows
            .iter()
            .filter_map(LimitRow::fraction)
            .fold(1.0, f64::max);
        let left_w = rows
            .iter()
            .map(|r| text_w(&r.case.name, 12.5) + 24.0)
            .chain(headers.iter().map(|(t, _)| bold_w(t, 13.0) + 20.0))
            .fold(0.0, f64::max);
        let kinds: Vec<Kind> = [Kind::Copy, Kind::Bf16, Kind::Fp8]
            .into_iter()
            .filter(|k| {
                rows.iter()
                    .any(|r| r.limit.as_ref().is_some_and(|(k2, _)| k2 == k))
            })
            .collect();
        let items: Vec<(Swatch, String)> = kinds
            .iter()
            .map(|k| {
                let what = match k {
                    Kind::Copy => "of the copy bandwidth (GB/s cases)",
                    Kind::Bf16 => "of the bf16 matmul rate (TFLOP/s cases)",
                    Kind::Fp8 => "of the FP8 matmul rate (FP8 TFLOP/s cases)",
                };
                (Swatch::Bar(k.color(), 1.0), what.to_string())
            })
            .collect();
        let all: Vec<&Case> = self.cases.iter().collect();
        let (root, plot) = page(
            path,
            "Achieved rate as a fraction of the measured limit",
            &format!("{} ({})", self.gpus_and_dates(&all), self.source),
            &items,
            total * SLOT + 12.0 + AXIS_H,
            &self.limit_notes(&rows),
        )?;
        let mut chart = ChartBuilder::on(&plot)
            .margin_left(8)
            .margin_right(24)
            .margin_top(4)
            .x_label_area_size(AXIS_H as i32)
            .y_label_area_size(left_w as i32)
            .build_cartesian_2d(0.0..xmax, 0.0..total)?;
        let pct = |v: &f64| format!("{:.0}%", v * 100.0);
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_labels(11)
            .x_desc("achieved / limit measured in the same run")
            .x_label_formatter(&pct)
            .label_style(font(12.0))
            .axis_desc_style(font(13.0))
            .bold_line_style(RGBColor(222, 222, 222))
            .light_line_style(TRANSPARENT)
            .draw()?;
        let y_of = |slot: f64| total - slot;
        for (title, slot) in &headers {
            let (px, py) = chart.backend_coord(&(0.0, y_of(*slot)));
            let at = (px - left_w as i32 + 14, py);
            put(&root, title, at, &bold(13.0), HPos::Left, VPos::Center)?;
        }
        for r in &rows {
            let y = y_of(r.slot);
            let (px, py) = chart.backend_coord(&(0.0, y));
            let name = &r.case.name;
            put(
                &root,
                name,
                (px - 10, py),
                &font(12.5),
                HPos::Right,
                VPos::Center,
            )?;
            let (Some(f), Some((kind, l))) = (r.fraction(), r.limit.as_ref()) else {
                let why = match r.case.achieved {
                    Some(a) => format!("no limit for {} {}", fmt_rate(a), r.case.unit),
                    None => "no achieved rate in the record".into(),
                };
                let muted = font(LABEL_PX).color(&MUTED);
                put(&root, &why, (px + 6, py), &muted, HPos::Left, VPos::Center)?;
                continue;
            };
            chart.draw_series([Rectangle::new(
                [(0.0, y - 0.34), (f, y + 0.34)],
                kind.color().filled(),
            )])?;
            let label = r.label(f, *kind, l);
            let (bx, _) = chart.backend_coord(&(f, y));
            // Inside the bar where it fits, else after it.
            let (dx, h, color) = if (bx - px) as f64 > text_w(&label, LABEL_PX) + 16.0 {
                (-6, HPos::Right, WHITE)
            } else {
                (6, HPos::Left, INK)
            };
            let style = font(LABEL_PX).color(&color);
            put(&root, &label, (bx + dx, py), &style, h, VPos::Center)?;
        }
        root.present()?;
        Ok(())
    }
}

/// Redraws every chart of a results file into `out_dir`; returns the files.
pub fn redraw(results: &Path, out_dir: &Path, opts: &Options) -> Result<Vec<PathBuf>> {
    Results::load(results, opts)?.write(out_dir, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A fresh folder under the system's temp dir.
    fn temp_dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("sparse-attn-charts-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// A small results file in the bench's format: peers in a record, peers
    /// only in a peer file next to it, a null peer, a TFLOP/s case without a
    /// matmul rate, an FP8 case, a case with FLOPs and bytes.
    #[test]
    fn draws_every_chart_from_a_synthetic_results_file() {
        let dir = temp_dir("synthetic");
        let common = json!({"gpu": "Test GPU", "date": "2030-01-02", "copy_gbs": 3000.0});
        let rec = |extra: Value| {
            let mut r = common.clone();
            r.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            r
        };
        let records = json!([
            rec(
                json!({"case": "synth-idx-decode", "op": "msa_indexer", "our_us": 100.0,
                       "achieved": 2900.0, "unit": "GB/s", "bytes": 2.9e8, "flops": 1.2e9,
                       "peers": {"torch-a": 250.0, "torch-b": 400.0, "not-run": null}})
            ),
            rec(
                json!({"case": "synth-idx-prefill", "op": "msa_indexer", "our_us": 1000.0,
                       "achieved": 300.0, "unit": "TFLOP/s", "bytes": 1e7, "flops": 3e11})
            ),
            rec(
                json!({"case": "synth-decode", "op": "msa_decode_attention", "our_us": 8.0,
                       "achieved": 500.0, "unit": "GB/s", "bytes": 4e6})
            ),
            rec(
                json!({"case": "synth-dense", "op": "dense_prefill", "our_us": 3000.0,
                       "achieved": 600.0, "unit": "TFLOP/s", "flops": 1.8e12,
                       "bf16_matmul_tflops": 700.0,
                       "peers": {"fa3": 2800.0, "sdpa-cudnn": 3100.0}})
            ),
            rec(
                json!({"case": "synth-mla", "op": "mla_indexer", "our_us": 5000.0,
                       "achieved": 700.0, "unit": "FP8 TFLOP/s", "bytes": 1.4e8, "flops": 2.2e12,
                       "logits_us": 3200.0, "fp8_matmul_tflops": 1400.0})
            ),
            rec(
                json!({"case": "synth-future-op", "op": "future_op", "our_us": 12.0,
                       "achieved": 10.0, "unit": "GB/s"})
            ),
        ]);
        let results = dir.join("synth.json");
        std::fs::write(&results, records.to_string()).unwrap();
        std::fs::write(
            dir.join("synth-peers.json"),
            json!({"_bf16_matmul_tflops": 750.0,
                   "synth-idx-prefill": {"torch-gather": 9000.0},
                   "synth-decode": {"cudnn-pregathered": 30.0}})
            .to_string(),
        )
        .unwrap();
        // A file next to it that is not a peer file of this results file.
        std::fs::write(dir.join("other-peers.json"), "{}").unwrap();
        let out = dir.join("charts");
        let files = redraw(&results, &out, &Options::default()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "synth-msa-indexer.svg",
                "synth-msa-decode.svg",
                "synth-dense-prefill.svg",
                "synth-mla-indexer.svg",
                "synth-future-op.svg",
                "synth-roofline.svg",
                "synth-limits.svg",
            ]
        );
        for f in &files {
            let svg = read(f);
            assert!(
                svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
                "{}",
                f.display()
            );
            assert!(
                svg.contains("Test GPU, 2030-01-02"),
                "{}: GPU and date in the title",
                f.display()
            );
        }
        let idx = read(&out.join("synth-msa-indexer.svg"));
        for s in [
            "synth-idx-decode",
            "synth-idx-prefill",
            "torch-a",
            "torch-b",
            "torch-gather *",
            "2.50× vs best peer",
            "9.00× vs best peer",
            "synth-peers.json",
            "not-run",
        ] {
            assert!(idx.contains(s), "msa-indexer chart lacks {s:?}");
        }
        let decode = read(&out.join("synth-msa-decode.svg"));
        assert!(decode.contains("synth-decode") && decode.contains("cudnn-pregathered *"));
        let dense = read(&out.join("synth-dense-prefill.svg"));
        assert!(dense.contains("synth-dense") && dense.contains("0.93× vs best peer"));
        assert!(read(&out.join("synth-future-op.svg")).contains("synth-future-op"));
        // Roofline: the cases with FLOPs and bytes, and the roofs.
        let roof = read(&out.join("synth-roofline.svg"));
        for s in [
            "synth-idx-decode",
            "synth-idx-prefill",
            "synth-mla",
            "synth-mla (logits)",
            "copy bandwidth 3000 GB/s",
            "bf16 matmul 700 TFLOP/s",
            "FP8 matmul 1400 TFLOP/s",
        ] {
            assert!(roof.contains(s), "roofline lacks {s:?}");
        }
        assert!(!roof.contains("synth-decode"), "synth-decode has no FLOPs");
        // Limits: every case; the prefill's bf16 rate borrowed from the
        // other records (700), marked.
        let lim = read(&out.join("synth-limits.svg"));
        for c in [
            "synth-idx-decode",
            "synth-idx-prefill",
            "synth-decode",
            "synth-dense",
            "synth-mla",
            "synth-future-op",
        ] {
            assert!(lim.contains(c), "limits chart lacks {c}");
        }
        assert!(lim.contains("43%: 300 of 700 TFLOP/s †"), "{lim}");
        assert!(lim.contains("other records of synth.json"));
        assert!(lim.contains("50%: 700 of 1400 FP8 TFLOP/s"));
        // The command line's rate goes first for records without one.
        let opts = Options {
            bf16_matmul_tflops: Some(600.0),
            ..Options::default()
        };
        redraw(&results, &out, &opts).unwrap();
        let lim = read(&out.join("synth-limits.svg"));
        assert!(lim.contains("50%: 300 of 600 TFLOP/s †") && lim.contains("--bf16-matmul-tflops"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The committed results draw (the charts in bench/charts come from them).
    #[test]
    fn draws_the_committed_results() {
        let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results/h200.json");
        let dir = temp_dir("h200");
        let res = Results::load(&results, &Options::default()).unwrap();
        let files = res.write(&dir, &Options::default()).unwrap();
        assert!(files.len() >= 3);
        let all: String = files.iter().map(|f| read(f)).collect();
        for case in res.case_names() {
            assert!(all.contains(case), "no chart names {case}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ticks_and_wrapping() {
        assert_eq!(fmt_tick(10.0), "10");
        assert_eq!(fmt_tick(10000.0), "10\u{2009}000");
        assert_eq!(fmt_tick(10f64.powf(-1.0)), "0.1");
        assert_eq!(fmt_tick(0.02), "0.02");
        assert_eq!(wrap("aa bb cc", 5), vec!["aa bb", "cc"]);
        assert_eq!(family_of("msa_decode_step").slug, "msa-decode");
        assert_eq!(family_of("new_op").slug, "new-op");
    }
}
