//! The incident report as a PDF, written in-process: title, summary, root
//! cause, policy evaluations, timeline, the incident certificate and how to verify it.
//! Multi-page: tables continue on the next page under a repeated header; every page has
//! a footer with the incident id and "page i of n".
//!
//! Only the PDF standard fonts (Helvetica, Courier) are used, so nothing is embedded and
//! nothing is read from disk. They speak WinAnsi (Latin-1 and a few signs): other
//! characters print as `?`. Pure: records in, bytes out; gathering is `evidence::export`.
//!
//! What the report draws (text in three standard fonts, filled rectangles, lines, in RGB)
//! is a small part of PDF, so the file is written here rather than by a PDF library:
//! a PDF 1.4 file with one compressed content stream per page and a cross-reference table
//! (ISO 32000-1, 7.5). The PDF libraries with text layout cost a third of the build.

use crate::domain::Incident;
use crate::domain::certificate::Certificate;
use crate::domain::evidence_pack::PolicyEvaluation;
use crate::domain::incident::rule_name;
use crate::incidents::timeline::{IncidentTimeline, plural};
use std::fmt::Write as _;
use std::io::Write as _;

/// The most timeline steps the report prints (the JSON pack has them all).
const MAX_TIMELINE_ROWS: usize = 500;

const PAGE_W: f32 = 595.28;
const PAGE_H: f32 = 841.89;
const LEFT: f32 = 50.0;
const RIGHT: f32 = PAGE_W - 50.0;
const TOP: f32 = PAGE_H - 50.0;
const BOTTOM: f32 = 64.0;

/// What the report is made from.
pub struct Report<'a> {
    pub incident: &'a Incident,
    pub timeline: &'a IncidentTimeline,
    pub evaluations: &'a [PolicyEvaluation],
    pub certificate: &'a Certificate,
    pub calls_exported: usize,
    pub calls_truncated: bool,
    /// RFC 3339.
    pub generated_at: String,
}

/// A colour in the device RGB space, each part 0..=1.
#[derive(Clone, Copy)]
struct Color(f32, f32, f32);

fn rgb(r: f32, g: f32, b: f32) -> Color {
    Color(r, g, b)
}

fn ink() -> Color {
    rgb(0.12, 0.13, 0.16)
}

fn muted() -> Color {
    rgb(0.42, 0.45, 0.50)
}

fn accent() -> Color {
    rgb(0.11, 0.24, 0.45)
}

/// Helvetica advance widths (1/1000 em) of ASCII 32..=126, from the standard font metrics.
const HELVETICA: [u16; 95] = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556,
    556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556, 1015, 667, 667, 722, 722, 667,
    611, 778, 722, 278, 500, 667, 556, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667,
    667, 611, 278, 278, 278, 469, 556, 333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500,
    222, 833, 556, 556, 556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Font {
    Regular,
    Bold,
    Mono,
}

impl Font {
    /// The font's resource name in every page's resources (see [`FONTS`]).
    fn resource(self) -> &'static str {
        match self {
            Self::Regular => "F1",
            Self::Bold => "F2",
            Self::Mono => "F3",
        }
    }

    fn width(self, s: &str, size: f32) -> f32 {
        let units: f32 = match self {
            Self::Mono => 600.0 * s.chars().count() as f32,
            Self::Regular | Self::Bold => s
                .chars()
                .map(|c| {
                    let i = (c as usize).wrapping_sub(32);
                    f32::from(HELVETICA.get(i).copied().unwrap_or(556))
                })
                .sum(),
        };
        // Bold glyphs are a little wider; a margin keeps estimates on the safe side.
        let factor = if self == Self::Bold { 1.07 } else { 1.0 };
        units * factor * size / 1000.0
    }
}

/// Text the standard fonts can show: WinAnsi-safe characters, one line.
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            '\u{2014}' | '\u{2013}' | '\u{2212}' => out.push('-'),
            '\u{2018}' | '\u{2019}' => out.push('\''),
            '\u{201C}' | '\u{201D}' => out.push('"'),
            '\u{2026}' => out.push_str("..."),
            '\u{2192}' => out.push_str("->"),
            ' '..='~' | '\u{A0}'..='\u{FF}' => out.push(c),
            _ => out.push('?'),
        }
    }
    out
}

/// Greedy word wrap to `max` points; words longer than a line are cut.
fn wrap(s: &str, font: Font, size: f32, max: f32) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in clean(s).split(' ').filter(|w| !w.is_empty()) {
        let candidate = if line.is_empty() {
            word.to_owned()
        } else {
            format!("{line} {word}")
        };
        if font.width(&candidate, size) <= max {
            line = candidate;
            continue;
        }
        if !line.is_empty() {
            lines.push(std::mem::take(&mut line));
        }
        let mut rest = word.to_owned();
        while font.width(&rest, size) > max {
            let mut cut = String::new();
            for c in rest.chars() {
                let mut next = cut.clone();
                next.push(c);
                if font.width(&next, size) > max && !cut.is_empty() {
                    break;
                }
                cut = next;
            }
            rest = rest[cut.len()..].to_owned();
            lines.push(cut);
        }
        line = rest;
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

struct Column {
    title: &'static str,
    width: f32,
    font: Font,
    /// Lines a cell may take before it is cut with "...".
    max_lines: usize,
}

impl Column {
    /// A column of one line of regular text per cell.
    const fn new(title: &'static str, width: f32) -> Self {
        Self {
            title,
            width,
            font: Font::Regular,
            max_lines: 1,
        }
    }
}

/// The standard fonts the report uses, by resource name; nothing is embedded.
const FONTS: [(&str, &str); 3] = [
    ("F1", "Helvetica"),
    ("F2", "Helvetica-Bold"),
    ("F3", "Courier"),
];

/// A number as PDF writes it: at most two decimals, no exponent.
struct Num(f32);

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = if self.0.is_finite() { self.0 } else { 0.0 };
        let s = format!("{v:.2}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        f.write_str(if s == "-0" || s.is_empty() { "0" } else { s })
    }
}

/// A colour as PDF writes the operands of `rg` and `RG`: its three parts.
impl std::fmt::Display for Color {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Color(r, g, b) = *self;
        write!(f, "{} {} {}", Num(r), Num(g), Num(b))
    }
}

/// A string as a PDF hex string in WinAnsi: [`clean`] leaves only characters whose code
/// is their WinAnsi byte (printable ASCII and U+00A0..=U+00FF).
fn hex_string(s: &str) -> String {
    let mut out = String::with_capacity(2 + 2 * s.len());
    out.push('<');
    for c in clean(s).chars() {
        let _ = write!(out, "{:02X}", u32::from(c).min(0xFF));
    }
    out.push('>');
    out
}

/// Lays out pages as content streams (one operator per line).
struct Writer {
    pages: Vec<String>,
    ops: String,
    y: f32,
}

impl Writer {
    fn new() -> Self {
        Self {
            pages: Vec::new(),
            ops: String::new(),
            y: TOP,
        }
    }

    fn new_page(&mut self) {
        self.pages.push(std::mem::take(&mut self.ops));
        self.y = TOP;
    }

    /// Starts a new page unless `needed` points fit above the bottom margin.
    fn ensure(&mut self, needed: f32) -> bool {
        if self.y - needed < BOTTOM {
            self.new_page();
            return true;
        }
        false
    }

    fn text(&mut self, x: f32, y: f32, s: &str, font: Font, size: f32, color: Color) {
        let _ = write!(
            self.ops,
            "BT\n/{} {} Tf\n{} rg\n{} {} Td\n{} Tj\nET\n",
            font.resource(),
            Num(size),
            color,
            Num(x),
            Num(y),
            hex_string(s)
        );
    }

    fn rect(&mut self, x: f32, y: f32, w: f32, h: f32, color: Color) {
        let _ = write!(
            self.ops,
            "{} rg\n{} {} {} {} re\nf\n",
            color,
            Num(x),
            Num(y),
            Num(w),
            Num(h)
        );
    }

    fn hline(&mut self, y: f32, color: Color, thickness: f32) {
        let _ = write!(
            self.ops,
            "{} RG\n{} w\n{} {} m\n{} {} l\nS\n",
            color,
            Num(thickness),
            Num(LEFT),
            Num(y),
            Num(RIGHT),
            Num(y)
        );
    }

    fn heading(&mut self, title: &str) {
        self.ensure(60.0);
        self.y -= 26.0;
        self.text(LEFT, self.y, title, Font::Bold, 13.0, accent());
        self.y -= 6.0;
        self.hline(self.y, accent(), 0.8);
        self.y -= 4.0;
    }

    fn paragraph(&mut self, s: &str, font: Font, size: f32, color: Color) {
        let lh = size * 1.4;
        for line in wrap(s, font, size, RIGHT - LEFT) {
            self.ensure(lh);
            self.y -= lh;
            self.text(LEFT, self.y, &line, font, size, color);
        }
    }

    /// A label on the left and its (wrapped) value on the right.
    fn field(&mut self, label: &str, value: &str, font: Font) {
        let (size, lh, at) = (9.5, 13.5, LEFT + 110.0);
        let lines = wrap(value, font, size, RIGHT - at);
        self.ensure(lh * lines.len().min(3) as f32);
        self.y -= lh;
        self.text(LEFT, self.y, label, Font::Bold, size, muted());
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                self.ensure(lh);
                self.y -= lh;
            }
            self.text(at, self.y, line, font, size, ink());
        }
    }

    fn table_header(&mut self, cols: &[Column]) {
        let h = 16.0;
        self.rect(LEFT, self.y - h, RIGHT - LEFT, h, rgb(0.11, 0.24, 0.45));
        let mut x = LEFT + 4.0;
        for c in cols {
            self.text(
                x,
                self.y - 11.5,
                c.title,
                Font::Bold,
                8.5,
                rgb(1.0, 1.0, 1.0),
            );
            x += c.width;
        }
        self.y -= h;
    }

    fn table(&mut self, cols: &[Column], rows: &[Vec<String>]) {
        let (size, lh, pad) = (8.0, 10.5, 3.5);
        self.ensure(16.0 + lh + 2.0 * pad);
        self.y -= 8.0;
        self.table_header(cols);
        for (r, row) in rows.iter().enumerate() {
            let cells: Vec<Vec<String>> = cols
                .iter()
                .zip(row)
                .map(|(c, v)| {
                    let mut lines = wrap(v, c.font, size, c.width - 8.0);
                    if lines.len() > c.max_lines {
                        lines.truncate(c.max_lines);
                        if let Some(last) = lines.last_mut() {
                            while !last.is_empty()
                                && c.font.width(&format!("{last}..."), size) > c.width - 8.0
                            {
                                last.pop();
                            }
                            last.push_str("...");
                        }
                    }
                    lines
                })
                .collect();
            let n = cells.iter().map(Vec::len).max().unwrap_or(1).max(1);
            let h = n as f32 * lh + 2.0 * pad;
            if self.ensure(h) {
                self.table_header(cols);
            }
            if r % 2 == 1 {
                self.rect(LEFT, self.y - h, RIGHT - LEFT, h, rgb(0.95, 0.96, 0.98));
            }
            let mut x = LEFT + 4.0;
            for (c, lines) in cols.iter().zip(&cells) {
                for (i, line) in lines.iter().enumerate() {
                    let y = self.y - pad - (i as f32 + 1.0) * lh + 2.5;
                    self.text(x, y, line, c.font, size, ink());
                }
                x += c.width;
            }
            self.y -= h;
        }
        self.hline(self.y, rgb(0.8, 0.82, 0.86), 0.5);
    }

    fn finish(mut self, title: &str, footer: &str) -> Vec<u8> {
        self.new_page();
        let total = self.pages.len();
        let mut pages = Vec::with_capacity(total);
        for (i, ops) in std::mem::take(&mut self.pages).into_iter().enumerate() {
            self.ops = ops;
            self.hline(BOTTOM - 22.0, rgb(0.85, 0.86, 0.9), 0.5);
            self.text(LEFT, BOTTOM - 36.0, footer, Font::Regular, 8.0, muted());
            let label = format!("Page {} of {total}", i + 1);
            let w = Font::Regular.width(&label, 8.0);
            self.text(
                RIGHT - w,
                BOTTOM - 36.0,
                &label,
                Font::Regular,
                8.0,
                muted(),
            );
            pages.push(std::mem::take(&mut self.ops));
        }
        write_pdf(title, &pages)
    }
}

/// The file: catalog, page tree, fonts, information, then each page with its compressed
/// content stream; the cross-reference table gives every object's byte offset.
fn write_pdf(title: &str, pages: &[String]) -> Vec<u8> {
    let mut out: Vec<u8> = b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n".to_vec();
    let mut offsets: Vec<usize> = Vec::new();
    let mut object = |out: &mut Vec<u8>, body: &[u8]| {
        offsets.push(out.len());
        let _ = writeln!(out, "{} 0 obj", offsets.len());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    };
    // Objects 1 catalog, 2 pages, 3.. fonts, then the information; pages follow.
    let first_page = 3 + FONTS.len() + 1;
    object(&mut out, b"<< /Type /Catalog /Pages 2 0 R >>");
    let kids: Vec<String> = (0..pages.len())
        .map(|i| format!("{} 0 R", first_page + 2 * i))
        .collect();
    let tree = format!(
        "<< /Type /Pages /Kids [{}] /Count {} >>",
        kids.join(" "),
        pages.len()
    );
    object(&mut out, tree.as_bytes());
    for (_, base) in FONTS {
        let font = format!(
            "<< /Type /Font /Subtype /Type1 /BaseFont /{base} /Encoding /WinAnsiEncoding >>"
        );
        object(&mut out, font.as_bytes());
    }
    let info = format!(
        "<< /Title {} /Producer (agv-server {}) >>",
        hex_string(title),
        env!("CARGO_PKG_VERSION")
    );
    object(&mut out, info.as_bytes());
    let fonts: Vec<String> = FONTS
        .iter()
        .enumerate()
        .map(|(i, (name, _))| format!("/{name} {} 0 R", 3 + i))
        .collect();
    for (i, content) in pages.iter().enumerate() {
        let page = format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {} {}] /Resources << /Font << {} >> >> /Contents {} 0 R >>",
            Num(PAGE_W),
            Num(PAGE_H),
            fonts.join(" "),
            first_page + 2 * i + 1
        );
        object(&mut out, page.as_bytes());
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        let compressed = z
            .write_all(content.as_bytes())
            .and_then(|()| z.finish())
            .unwrap_or_default();
        let mut stream = format!(
            "<< /Length {} /Filter /FlateDecode >>\nstream\n",
            compressed.len()
        )
        .into_bytes();
        stream.extend_from_slice(&compressed);
        stream.extend_from_slice(b"\nendstream");
        object(&mut out, &stream);
    }
    let xref = out.len();
    let _ = write!(out, "xref\n0 {}\n0000000000 65535 f \n", offsets.len() + 1);
    for at in &offsets {
        let _ = writeln!(out, "{at:010} 00000 n ");
    }
    let _ = write!(
        out,
        "trailer\n<< /Size {} /Root 1 0 R /Info {} 0 R >>\nstartxref\n{xref}\n%%EOF\n",
        offsets.len() + 1,
        3 + FONTS.len()
    );
    out
}

/// A policy's name with its id: "Prompt injection (dg-005)".
fn guardrail(policy: &str) -> String {
    let name = rule_name(policy);
    if name.contains(policy) {
        name.to_owned()
    } else {
        format!("{name} ({policy})")
    }
}

/// The report's bytes (a complete PDF file).
pub fn render(r: &Report<'_>) -> Vec<u8> {
    let inc = r.incident;
    let mut w = Writer::new();

    // Title band.
    w.rect(0.0, PAGE_H - 112.0, PAGE_W, 112.0, rgb(0.09, 0.16, 0.30));
    let generated = format!("{}   ·   generated {}", inc.id, r.generated_at);
    for (down, text, font, size, color) in [
        (
            52.0,
            "Incident report",
            Font::Bold,
            22.0,
            rgb(1.0, 1.0, 1.0),
        ),
        (74.0, &inc.title, Font::Regular, 12.0, rgb(0.85, 0.89, 0.96)),
        (96.0, &generated, Font::Mono, 9.0, rgb(0.75, 0.81, 0.92)),
    ] {
        w.text(LEFT, PAGE_H - down, text, font, size, color);
    }
    w.y = PAGE_H - 120.0;

    w.heading("Summary");
    w.field("Title", &inc.title, Font::Regular);
    w.field("Incident", inc.id.as_str(), Font::Mono);
    w.field("Severity", inc.severity.as_str(), Font::Regular);
    w.field("Status", inc.status.as_str(), Font::Regular);
    w.field("Tenant", inc.tenant_id.as_str(), Font::Mono);
    w.field("Rule", &guardrail(&inc.rule), Font::Regular);
    w.field("Subject", &inc.subject, Font::Regular);
    w.field(
        "First seen",
        &inc.first_signal_at.to_rfc3339(),
        Font::Regular,
    );
    w.field("Last seen", &inc.last_signal_at.to_rfc3339(), Font::Regular);
    if let Some(t) = inc.acknowledged_at {
        w.field("Acknowledged", &t.to_rfc3339(), Font::Regular);
    }
    if let Some(t) = inc.resolved_at {
        w.field("Resolved", &t.to_rfc3339(), Font::Regular);
    }
    if let Some(a) = &inc.assignee {
        w.field("Assignee", a, Font::Regular);
    }
    w.field(
        "Counts",
        &format!(
            "{}, {}, {}{}",
            plural(inc.signal_count, "signal"),
            plural(inc.call_count, "call"),
            plural(inc.end_user_count, "end user"),
            if r.calls_truncated {
                format!(" ({} calls in this export)", r.calls_exported)
            } else {
                String::new()
            }
        ),
        Font::Regular,
    );
    w.field(
        "Cost",
        &format!("{} (known cost of the affected calls)", inc.cost),
        Font::Regular,
    );
    w.y -= 6.0;
    w.paragraph(&r.timeline.summary, Font::Regular, 9.5, ink());

    w.heading("Root cause");
    w.paragraph(&r.timeline.root_cause, Font::Regular, 9.5, ink());

    w.heading("Policy evaluations");
    if r.evaluations.is_empty() {
        w.paragraph(
            "No decisions were recorded on the incident's calls.",
            Font::Regular,
            9.5,
            muted(),
        );
    } else {
        let cols = [
            Column::new("Guardrail", 255.0),
            Column::new("Pass", 60.0),
            Column::new("Block", 60.0),
            Column::new("Throttle", 60.0),
            Column::new("Freeze", 60.0),
        ];
        let rows: Vec<Vec<String>> = r
            .evaluations
            .iter()
            .map(|e| {
                vec![
                    guardrail(&e.policy),
                    e.pass.to_string(),
                    e.block.to_string(),
                    e.throttle.to_string(),
                    e.freeze.to_string(),
                ]
            })
            .collect();
        w.table(&cols, &rows);
    }

    w.heading("Timeline");
    let steps = &r.timeline.steps;
    let cols = [
        Column::new("Time (UTC)", 118.0),
        Column {
            font: Font::Bold,
            max_lines: 2,
            ..Column::new("Step", 122.0)
        },
        Column {
            font: Font::Regular,
            max_lines: 4,
            ..Column::new("Detail", 255.0)
        },
    ];
    let rows: Vec<Vec<String>> = steps
        .iter()
        .take(MAX_TIMELINE_ROWS)
        .map(|s| {
            let mut detail = s.detail.clone();
            if let Some(c) = &s.call_id {
                detail = format!("{detail} (call {c})");
            }
            vec![s.at.replace('T', " "), s.title.clone(), detail]
        })
        .collect();
    w.table(&cols, &rows);
    if steps.len() > MAX_TIMELINE_ROWS {
        w.y -= 4.0;
        w.paragraph(
            &format!(
                "{} more steps are in the signed JSON evidence pack (format=json).",
                steps.len() - MAX_TIMELINE_ROWS
            ),
            Font::Regular,
            8.5,
            muted(),
        );
    }

    let cert = r.certificate;
    w.heading("Certificate");
    w.field("Certificate", cert.certificate_id.as_str(), Font::Mono);
    w.field("Issued", &cert.issued_at, Font::Regular);
    w.field("Instance", &cert.instance_id, Font::Mono);
    w.field("Policy version", &cert.policy_version, Font::Mono);
    w.field(
        "Chain head",
        cert.chain_head
            .as_deref()
            .unwrap_or("(no chained call yet)"),
        Font::Mono,
    );
    w.field("Algorithm", "Ed25519 (RFC 8032)", Font::Regular);
    w.field("Public key", &cert.public_key, Font::Mono);
    w.field("Signature", &cert.signature, Font::Mono);

    w.heading("How to verify");
    let steps = [
        format!(
            "1. Download the signed evidence pack: GET /v1/incidents/{}/export?format=json (an admin key of the tenant). It holds the incident, its timeline, its calls with their decisions and chain proofs, and this certificate.",
            inc.id
        ),
        "2. Get the instance's public key from a source you trust: GET /v1/certificates/public-key on the instance, or the public key printed above.".to_owned(),
        format!(
            "3. Verify offline, without the server: agv-server verify incident-{}.json --public-key <public key>. Exit status 0 means the pack's signature, every chain proof and the embedded certificate hold; 1 names what does not.",
            inc.id
        ),
        format!(
            "4. Anyone may check the certificate on the instance without seeing its content: GET /v1/certificates/{}/verify.",
            cert.certificate_id
        ),
        "5. The operator can show that the tenant's call chain still leads to the chain head above: agv-server audit verify --tenant <tenant>.".to_owned(),
    ];
    for s in &steps {
        w.y -= 3.0;
        w.paragraph(s, Font::Regular, 9.5, ink());
    }

    let footer = format!(
        "agv-server  ·  incident {}  ·  {}",
        inc.id,
        inc.severity.as_str()
    );
    w.finish(&format!("Incident report {}", inc.id), &footer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cross-reference table gives each object's offset, `startxref` the table's, and
    /// every page's stream inflates to the operators drawn on it.
    #[test]
    fn the_file_is_a_pdf_whose_cross_references_point_at_their_objects() {
        let mut w = Writer::new();
        w.rect(0.0, 700.0, PAGE_W, 100.0, rgb(0.1, 0.2, 0.3));
        w.text(
            LEFT,
            750.0,
            "Caf\u{e9} (report) \\ 1",
            Font::Bold,
            22.0,
            ink(),
        );
        for _ in 0..80 {
            w.paragraph("a line of the timeline", Font::Mono, 9.0, muted());
        }
        let pdf = w.finish("Incident report x", "footer");
        // Latin-1 keeps one char per byte, so offsets into `text` are byte offsets.
        let text: String = pdf.iter().map(|&b| char::from(b)).collect();
        let at = |offset: usize, prefix: &str| pdf[offset..].starts_with(prefix.as_bytes());
        assert!(at(0, "%PDF-1.4\n"));
        assert!(text.ends_with("%%EOF\n"));
        let start: usize = text
            .rsplit("startxref\n")
            .next()
            .and_then(|t| t.lines().next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(at(start, "xref\n0 "));
        let table: String = text.chars().skip(start).collect();
        let entries: Vec<usize> = table
            .lines()
            .skip(3)
            .take_while(|l| l.ends_with(" n "))
            .map(|l| l[..10].parse().unwrap())
            .collect();
        let pages = text.matches("/Type /Page ").count();
        assert_eq!(pages, 2, "the paragraphs run onto a second page");
        assert_eq!(entries.len(), 6 + 2 * pages);
        for (i, offset) in entries.iter().enumerate() {
            assert!(
                at(*offset, &format!("{} 0 obj\n", i + 1)),
                "object {} at {offset}",
                i + 1
            );
        }
        assert!(text.contains(&format!("/Count {pages}")));
        let first = pdf.windows(7).position(|w| w == b"stream\n").unwrap() + 7;
        let head = &text[..text.find("stream\n").unwrap()];
        let len: usize = head
            .rsplit("/Length ")
            .next()
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        let mut content = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::ZlibDecoder::new(&pdf[first..first + len]),
            &mut content,
        )
        .unwrap();
        assert!(content.contains("/F2 22 Tf\n"), "{content}");
        assert!(content.contains(&format!("{} Tj\n", hex_string("Caf\u{e9} (report) \\ 1"))));
        assert!(content.contains("<436166E9"), "WinAnsi bytes: {content}");
        assert!(content.contains("0 700 595.28 100 re\nf\n"), "{content}");
        assert!(
            content.contains("<506167652031206F662032> Tj"),
            "Page 1 of 2"
        );
        assert_eq!(Num(-0.001).to_string(), "0");
        assert_eq!(Num(12.5).to_string(), "12.5");
        assert_eq!(Num(f32::NAN).to_string(), "0");
    }

    #[test]
    fn text_is_made_winansi_safe_and_wrapped_within_the_width() {
        assert_eq!(clean("a\u{2014}b \u{1F600}\nc"), "a-b ? c");
        let lines = wrap(&"word ".repeat(100), Font::Regular, 10.0, 200.0);
        assert!(lines.len() > 5);
        assert!(lines.iter().all(|l| Font::Regular.width(l, 10.0) <= 200.0));
        let long = wrap(&"x".repeat(500), Font::Mono, 10.0, 100.0);
        assert!(long.iter().all(|l| Font::Mono.width(l, 10.0) <= 100.0));
        assert_eq!(long.concat().len(), 500);
        assert_eq!(wrap("", Font::Regular, 10.0, 100.0), vec![String::new()]);
    }
}
