//! Line charts with `plotters`: one panel per operation (or whatever the caller groups by), one
//! line per series, written as SVG and PNG.
//!
//! The same drawing goes to plotters' SVG backend (text kept as text) and to its bitmap backend
//! (text drawn with ab_glyph from the TrueType font [`register_font`] loads), as the lab's plot
//! does.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::{Error, Result};

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
    draw(chart, SVGBackend::new(svg, size).into_drawing_area())
        .map_err(|e| Error(format!("drawing {}: {e}", svg.display())))?;
    draw(chart, BitMapBackend::new(png, size).into_drawing_area())
        .map_err(|e| Error(format!("drawing {}: {e}", png.display())))
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

/// Draw the whole figure on `root` and write it out.
fn draw<DB: DrawingBackend>(
    chart: &Chart,
    root: DrawingArea<DB, Shift>,
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
    // plotters' bitmap backend draws text about a quarter of its size above where the SVG has it, so
    // the title starts 8 pixels down: otherwise its tallest letters lose their tops in the PNG.
    let body = root
        .margin(8, 0, 0, 0)
        .titled(&chart.title, ("sans-serif", size).into_font().color(&BLACK))
        .map_err(e)?;
    let (legend, grid) = body.split_vertically(44);
    draw_legend(chart, &legend)?;
    let (rows, cols) = chart.grid();
    let areas = grid.split_evenly((rows, cols));
    for (panel, area) in chart.panels.iter().zip(areas.iter()) {
        draw_panel(chart, panel, area)?;
    }
    root.present().map_err(e)
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

/// Register the first font found as "sans-serif", once per process. With plotters' `ab_glyph`
/// feature both backends measure text, and the bitmap backend draws it, through this font
/// registry, so every chart registers one before drawing.
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
        // The signature, then the IHDR chunk: its width and height.
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&bytes[12..16], b"IHDR");
        let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
        assert_eq!((be(&bytes[16..20]), be(&bytes[20..24])), c.size());
    }

    #[test]
    fn the_png_has_dark_text_pixels_and_coloured_lines() {
        register_font().unwrap();
        let c = chart();
        let (w, h) = c.size();
        // The PNG's pixels before encoding: the bitmap backend drawing into an RGB buffer.
        let mut rgb = vec![0u8; w as usize * h as usize * 3];
        draw(
            &c,
            BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area(),
        )
        .unwrap();
        let pixel = |x: u32, y: u32| {
            let i = (y as usize * w as usize + x as usize) * 3;
            (rgb[i], rgb[i + 1], rgb[i + 2])
        };
        let mut dark = 0;
        let mut first_colour = 0;
        for y in 0..h {
            for x in 0..w {
                let p = pixel(x, y);
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
        assert!((0..w).all(|x| pixel(x, 0) == (255, 255, 255)));
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
