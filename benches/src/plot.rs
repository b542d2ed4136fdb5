//! Line charts with `plotters`: one panel per operation (or whatever the caller groups by), one
//! line per series, written as SVG and PNG.
//!
//! The SVG keeps its text as text. The PNG is drawn on [`Canvas`], a plain RGB buffer that
//! draws text with the harness's own pixel font ([`crate::font`]) and is encoded with `png`,
//! so neither file depends on fonts installed on the machine.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters_backend::{
    text_anchor::{HPos, Pos, VPos},
    BackendColor, BackendCoord, BackendTextStyle, DrawingErrorKind,
};

use crate::{font, Context, Error, Result};

/// One line of a panel.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The legend entry; series with the same name share a colour across panels.
    pub name: String,
    /// (x, y) points, in x order; points with y <= 0 are left out on a log y axis.
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed, without point markers (e.g. a reference limit).
    pub dashed: bool,
}

/// One chart of the grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    /// Shown above the panel.
    pub title: String,
    /// Its lines.
    pub series: Vec<Series>,
}

/// A figure: a title and a grid of panels sharing axis descriptions.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    /// Shown above the grid.
    pub title: String,
    /// X axis description.
    pub x_label: String,
    /// Y axis description.
    pub y_label: String,
    /// X values are powers of two (thread counts): the axis is log2 with a tick at each.
    pub log2_x: bool,
    /// Log-scale Y axis.
    pub log_y: bool,
    /// The panels, laid out row by row.
    pub panels: Vec<Panel>,
}

/// Line colours, in the order series names first appear; a series named like the raw limit
/// is drawn in dark grey instead.
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
];

impl Chart {
    /// Every series name, in first-appearance order (fixes the colours).
    fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for s in self.panels.iter().flat_map(|p| &p.series) {
            if !names.contains(&s.name.as_str()) {
                names.push(&s.name);
            }
        }
        names
    }

    fn colour(&self, series: &Series) -> RGBColor {
        if series.dashed {
            return RGBColor(70, 70, 70);
        }
        let i = self
            .names()
            .iter()
            .filter(|n| !self.is_dashed(n))
            .position(|n| *n == series.name)
            .unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    }

    fn is_dashed(&self, name: &str) -> bool {
        self.panels
            .iter()
            .flat_map(|p| &p.series)
            .any(|s| s.name == name && s.dashed)
    }

    /// Rows and columns of the grid.
    pub fn grid(&self) -> (usize, usize) {
        let n = self.panels.len().max(1);
        let cols = match n {
            1 => 1,
            2 | 4 => 2,
            3 | 5 | 6 | 9 => 3,
            _ => 4,
        };
        (n.div_ceil(cols), cols)
    }

    /// The figure size in pixels.
    pub fn size(&self) -> (u32, u32) {
        let (rows, cols) = self.grid();
        (cols as u32 * 480, rows as u32 * 340 + 60)
    }
}

/// Write `chart` as an SVG file and a PNG file.
pub fn plot_lines(chart: &Chart, svg: &Path, png: &Path) -> Result<()> {
    register_font()?;
    let size = chart.size();
    {
        let root = SVGBackend::new(svg, size).into_drawing_area();
        draw(chart, &root).map_err(|e| Error(format!("drawing {}: {e}", svg.display())))?;
        root.present()
            .map_err(|e| Error(format!("writing {}: {e}", svg.display())))?;
    }
    let mut canvas = Canvas::new(size);
    {
        let root = (&mut canvas).into_drawing_area();
        draw(chart, &root).map_err(|e| Error(format!("drawing {}: {e}", png.display())))?;
    }
    canvas.write_png(png)
}

/// Tick label for a count: 950, 1.2k, 45k, 1.1M.
pub fn si(v: f64) -> String {
    let a = v.abs();
    let (d, unit) = if a >= 1e9 {
        (1e9, "G")
    } else if a >= 1e6 {
        (1e6, "M")
    } else if a >= 1e3 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    let x = v / d;
    if x.abs() >= 10.0 || x.fract().abs() < 0.05 {
        format!("{x:.0}{unit}")
    } else {
        format!("{x:.1}{unit}")
    }
}

/// Tick label on a log axis: 1, 2 and 5 times a power of ten are labelled, the other ticks
/// plotters places between them are left blank (they would crowd each other).
pub fn log_tick(v: f64) -> String {
    if v <= 0.0 || !v.is_finite() {
        return String::new();
    }
    let m = v / 10f64.powf(v.log10().floor());
    if [1.0, 2.0, 5.0, 10.0]
        .iter()
        .any(|k| (m - k).abs() < 1e-6 * k)
    {
        si(v)
    } else {
        String::new()
    }
}

/// Draw the whole figure on `root`.
fn draw<DB: DrawingBackend>(
    chart: &Chart,
    root: &DrawingArea<DB, Shift>,
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    // A smaller title when the large one would not fit the figure's width.
    let width = root.dim_in_pixel().0 as usize;
    let size = if chart.title.chars().count() * 18 + 40 > width {
        26
    } else {
        36
    };
    let body = root
        .titled(&chart.title, ("sans-serif", size).into_font().color(&BLACK))
        .map_err(e)?;
    let (legend, grid) = body.split_vertically(44);
    draw_legend(chart, &legend)?;
    let (rows, cols) = chart.grid();
    let areas = grid.split_evenly((rows, cols));
    for (panel, area) in chart.panels.iter().zip(areas.iter()) {
        draw_panel(chart, panel, area)?;
    }
    Ok(())
}

/// One legend for the whole figure, centred under the title: a series keeps its colour in
/// every panel, so one key serves them all and no panel has a box over its lines.
fn draw_legend<DB: DrawingBackend>(
    chart: &Chart,
    area: &DrawingArea<DB, Shift>,
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let font = ("sans-serif", 26).into_font().color(&BLACK);
    let names = chart.names();
    let entries: Vec<(Series, u32)> = names
        .iter()
        .map(|n| {
            let dashed = chart.is_dashed(n);
            let s = Series {
                name: n.to_string(),
                points: Vec::new(),
                dashed,
            };
            let w = area.estimate_text_size(n, &font).map_or(0, |(w, _)| w);
            (s, w)
        })
        .collect();
    const SWATCH: i32 = 40;
    const GAP: i32 = 36;
    let total: i32 = entries
        .iter()
        .map(|(_, w)| SWATCH + 10 + *w as i32 + GAP)
        .sum::<i32>()
        - GAP;
    let (width, height) = area.dim_in_pixel();
    let mut x = ((width as i32 - total) / 2).max(4);
    let y = height as i32 / 2;
    for (s, w) in &entries {
        let c = chart.colour(s);
        let style = c.stroke_width(3);
        if s.dashed {
            for k in (0..SWATCH).step_by(12) {
                area.draw(&PathElement::new(
                    vec![(x + k, y), ((x + k + 7).min(x + SWATCH), y)],
                    style,
                ))
                .map_err(e)?;
            }
        } else {
            area.draw(&PathElement::new(vec![(x, y), (x + SWATCH, y)], style))
                .map_err(e)?;
            area.draw(&Circle::new((x + SWATCH / 2, y), 4, c.filled()))
                .map_err(e)?;
        }
        x += SWATCH + 10;
        area.draw(&Text::new(
            s.name.clone(),
            (x, y),
            font.clone().pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(e)?;
        x += *w as i32 + GAP;
    }
    Ok(())
}

/// The y range of a panel: from below its smallest point to above its largest.
fn y_range(panel: &Panel, log_y: bool) -> Option<(f64, f64)> {
    let ys = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|y| y.is_finite() && (!log_y || *y > 0.0));
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    if lo > hi {
        return None;
    }
    Some(if log_y {
        // From a power of ten: plotters labels a log axis at powers of ten and the steps
        // between them, so a range with no power of ten in it would have no labels.
        (10f64.powf((lo / 1.3).log10().floor()), hi * 2.0)
    } else {
        (0.0f64.min(lo), hi * 1.1 + f64::EPSILON)
    })
}

fn draw_panel<DB: DrawingBackend>(
    chart: &Chart,
    panel: &Panel,
    area: &DrawingArea<DB, Shift>,
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let x_of = |x: f64| if chart.log2_x { x.max(1e-9).log2() } else { x };
    let xs = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| x_of(p.0)));
    let (x_lo, x_hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    let Some((y_lo, y_hi)) = y_range(panel, chart.log_y).filter(|_| x_lo <= x_hi) else {
        area.draw(&Text::new(
            format!("{}: no data", panel.title),
            (20, 40),
            ("sans-serif", 24).into_font(),
        ))
        .map_err(e)?;
        return Ok(());
    };
    let pad = ((x_hi - x_lo) * 0.05).max(0.25);
    let x_range = (x_lo - pad)..(x_hi + pad);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&panel.title, ("sans-serif", 26).into_font().color(&BLACK))
        .margin(10)
        .x_label_area_size(44)
        .y_label_area_size(76);
    let x_fmt = |v: &f64| {
        if chart.log2_x {
            if (v - v.round()).abs() < 1e-6 {
                si(2f64.powf(v.round()))
            } else {
                String::new()
            }
        } else {
            si(*v)
        }
    };
    let x_labels = if chart.log2_x {
        ((x_hi - x_lo).round() as usize + 1).max(2)
    } else {
        6
    };
    let y_fmt = |v: &f64| {
        if chart.log_y {
            log_tick(*v)
        } else {
            si(*v)
        }
    };
    let style = |s: &Series| {
        let c = chart.colour(s);
        (c, ShapeStyle::from(&c).stroke_width(2))
    };
    macro_rules! finish {
        ($ctx:expr) => {{
            let mut ctx = $ctx;
            ctx.configure_mesh()
                .x_labels(x_labels)
                .x_label_formatter(&x_fmt)
                .y_label_formatter(&y_fmt)
                .x_desc(&chart.x_label)
                .y_desc(&chart.y_label)
                .label_style(("sans-serif", 22).into_font())
                .axis_desc_style(("sans-serif", 24).into_font())
                .light_line_style(WHITE)
                .bold_line_style(RGBColor(220, 220, 220))
                .draw()
                .map_err(e)?;
            for s in &panel.series {
                let pts: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .filter(|p| p.1.is_finite() && (!chart.log_y || p.1 > 0.0))
                    .map(|p| (x_of(p.0), p.1))
                    .collect();
                let (c, st) = style(s);
                if s.dashed {
                    ctx.draw_series(DashedLineSeries::new(pts, 8, 5, st))
                        .map_err(e)?;
                } else {
                    ctx.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
                        .map_err(e)?;
                    ctx.draw_series(LineSeries::new(pts, st)).map_err(e)?;
                }
            }
        }};
    }
    match chart.log_y {
        true => finish!(builder
            .build_cartesian_2d(x_range, (y_lo..y_hi).log_scale())
            .map_err(e)?),
        false => finish!(builder.build_cartesian_2d(x_range, y_lo..y_hi).map_err(e)?),
    }
    Ok(())
}

/// An RGB pixel buffer that plotters draws on, with text in the harness's pixel font.
pub struct Canvas {
    size: (u32, u32),
    rgb: Vec<u8>,
}

impl Canvas {
    /// A white canvas of `size` pixels.
    pub fn new(size: (u32, u32)) -> Canvas {
        Canvas {
            size,
            rgb: vec![255; size.0 as usize * size.1 as usize * 3],
        }
    }

    /// The colour at (`x`, `y`).
    pub fn pixel(&self, x: u32, y: u32) -> Option<(u8, u8, u8)> {
        if x >= self.size.0 || y >= self.size.1 {
            return None;
        }
        let i = (y as usize * self.size.0 as usize + x as usize) * 3;
        Some((self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]))
    }

    /// Encode as an 8-bit RGB PNG.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let file = std::fs::File::create(path).context(&format!("creating {}", path.display()))?;
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), self.size.0, self.size.1);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc
            .write_header()
            .context(&format!("writing {}", path.display()))?;
        w.write_image_data(&self.rgb)
            .context(&format!("writing {}", path.display()))?;
        w.finish().context(&format!("writing {}", path.display()))
    }
}

// Implemented on `&mut Canvas`: plotters takes its backend by value, and the pixels are still
// needed after drawing (to encode them).
impl DrawingBackend for &mut Canvas {
    type ErrorType = std::convert::Infallible;

    fn get_size(&self) -> (u32, u32) {
        self.size
    }

    fn ensure_prepared(&mut self) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        Ok(())
    }

    fn present(&mut self) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        Ok(())
    }

    fn draw_pixel(
        &mut self,
        (x, y): BackendCoord,
        color: BackendColor,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        let (w, h) = self.size;
        if x < 0 || y < 0 || x as u32 >= w || y as u32 >= h || color.alpha <= 0.0 {
            return Ok(());
        }
        let i = (y as usize * w as usize + x as usize) * 3;
        let a = color.alpha.min(1.0);
        let (r, g, b) = color.rgb;
        for (k, c) in [r, g, b].into_iter().enumerate() {
            let old = self.rgb[i + k] as f64;
            self.rgb[i + k] = (old * (1.0 - a) + c as f64 * a).round() as u8;
        }
        Ok(())
    }

    fn draw_text<TStyle: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &TStyle,
        pos: BackendCoord,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        let color = style.color();
        let scale = font::scale(style.size());
        let (w, h) = font::text_size(text, scale);
        let (w, h) = (w as i32, h as i32);
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0,
            HPos::Center => -w / 2,
            HPos::Right => -w,
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0,
            VPos::Center => -h / 2,
            VPos::Bottom => -h,
        };
        let transform = style.transform();
        for (x, y) in font::pixels(text, scale) {
            let (x, y) = transform.transform(x + dx, y + dy);
            self.draw_pixel((pos.0 + x, pos.1 + y), color)?;
        }
        Ok(())
    }

    fn estimate_text_size<TStyle: BackendTextStyle>(
        &self,
        text: &str,
        style: &TStyle,
    ) -> std::result::Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        Ok(font::text_size(text, font::scale(style.size())))
    }
}

/// Where a TrueType font for the plots' text may be: `HSMPOOL_BENCH_FONT`, then Debian's
/// fonts-dejavu-core and its usual places elsewhere.
fn font_candidates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::env::var_os("HSMPOOL_BENCH_FONT")
        .filter(|f| !f.is_empty())
        .map(PathBuf::from)
        .into_iter()
        .collect();
    v.extend(
        [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        ]
        .map(PathBuf::from),
    );
    v
}

/// Register the first font found as "sans-serif", once per process. plotters measures text
/// through its font registry (the `ab_glyph` feature the lab's PNG needs), so every chart
/// registers one before drawing.
pub fn register_font() -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        for p in font_candidates() {
            if let Ok(bytes) = std::fs::read(&p) {
                // The font table keeps a 'static reference: one font, leaked once per process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(
            "no TrueType font for the plot's text: install fonts-dejavu-core or name a .ttf \
             with HSMPOOL_BENCH_FONT"
                .into(),
        )
    })
    .clone()
    .map_err(Error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart {
        let line = |name: &str, k: f64, dashed: bool| Series {
            name: name.into(),
            points: [1.0, 2.0, 4.0, 16.0, 64.0]
                .iter()
                .map(|&t: &f64| (t, k * t.min(2.0)))
                .collect(),
            dashed,
        };
        Chart {
            title: "Throughput by threads".into(),
            x_label: "threads".into(),
            y_label: "ops/s".into(),
            log2_x: true,
            log_y: true,
            panels: vec![
                Panel {
                    title: "RSA-2048 sign".into(),
                    series: vec![
                        line("hsmpool", 4000.0, false),
                        line("softhsm2", 1500.0, false),
                        line("raw aws-lc-rs", 4100.0, true),
                    ],
                },
                Panel {
                    title: "find by label".into(),
                    series: vec![line("hsmpool", 900_000.0, false)],
                },
                Panel {
                    title: "nothing measured".into(),
                    series: vec![],
                },
            ],
        }
    }

    #[test]
    fn a_chart_is_written_as_svg_and_png_with_its_text() {
        let dir = tempfile::tempdir().unwrap();
        let (svg, png) = (dir.path().join("t.svg"), dir.path().join("t.png"));
        let c = chart();
        plot_lines(&c, &svg, &png).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        for needle in [
            "Throughput by threads",
            "RSA-2048 sign",
            "softhsm2",
            "raw aws-lc-rs",
            "threads",
            "ops/s",
            "no data",
        ] {
            assert!(text.contains(needle), "the SVG lacks {needle:?}");
        }
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        assert_eq!((info.width, info.height), c.size());
    }

    #[test]
    fn the_png_has_dark_text_pixels_and_coloured_lines() {
        let c = chart();
        let mut canvas = Canvas::new(c.size());
        {
            let root = (&mut canvas).into_drawing_area();
            draw(&c, &root).unwrap();
        }
        let (w, h) = c.size();
        let mut dark = 0;
        let mut first_colour = 0;
        for y in 0..h {
            for x in 0..w {
                let p = canvas.pixel(x, y).unwrap();
                if p == (0, 0, 0) {
                    dark += 1;
                }
                if p == (PALETTE[0].0, PALETTE[0].1, PALETTE[0].2) {
                    first_colour += 1;
                }
            }
        }
        // Title, captions, tick labels and legends in black; the first series' line in its colour.
        assert!(dark > 2_000, "{dark} black pixels");
        assert!(
            first_colour > 200,
            "{first_colour} pixels of the first series"
        );
        // Above the title's top row everything is white.
        assert!((0..w).all(|x| canvas.pixel(x, 0) == Some((255, 255, 255))));
    }

    #[test]
    fn series_keep_their_colour_across_panels_and_grids_fit() {
        let c = chart();
        let a = c.colour(&c.panels[0].series[0]);
        let b = c.colour(&c.panels[1].series[0]);
        assert_eq!(a, b, "hsmpool is one colour everywhere");
        assert_ne!(a, c.colour(&c.panels[0].series[1]));
        for n in 1..=20 {
            let c = Chart {
                panels: vec![
                    Panel {
                        title: String::new(),
                        series: vec![]
                    };
                    n
                ],
                ..chart()
            };
            let (r, k) = c.grid();
            assert!(r * k >= n && r * k < n + k, "{n}: {r}x{k}");
        }
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(si(950.0), "950");
        assert_eq!(si(1200.0), "1.2k");
        assert_eq!(si(45_000.0), "45k");
        assert_eq!(si(1_100_000.0), "1.1M");
        assert_eq!(si(2_000_000.0), "2M");
        assert_eq!(si(0.5), "0.5");
        assert_eq!(log_tick(2000.0), "2k");
        assert_eq!(log_tick(50_000.0), "50k");
        assert_eq!(log_tick(1e6), "1M");
        assert_eq!(log_tick(3000.0), "");
        assert_eq!(log_tick(0.0), "");
    }
}
